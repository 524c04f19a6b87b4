print("twinfs-sim")
