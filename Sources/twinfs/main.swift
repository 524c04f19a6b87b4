print("twinfs")
