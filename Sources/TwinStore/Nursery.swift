// Nursery: where new data files are born. ext4 without a journal (this machine kind's root filesystem) avoids
// reusing an inode freed in the last minute or so: to allocate, it scans past every such inode in the group, and
// once a group holds thousands (after an `rm -rf`, or this store's own trash) each create costs up to a
// millisecond. The 256 data directories sit exactly where every deleted data file was, so a new data file is
// created in a nursery directory made afresh every `filesPerNursery` files — ext4 places a new directory of a
// "top" directory (FS_TOPDIR_FL) where inodes are free — and renamed into its data directory (measured: 170 us per create in a data directory after a
// deletion storm, 17 us in a new directory; the rename costs ~5 us).
// Owns: the current nursery directory. Never: hold a file in the nursery past `born` (an empty file found there
// at mount was never named: the crash came between its creation and its rename, and it is removed).
import Glibc
import CLinuxShims

final class Nursery {
    static let prefix = "nursery-"
    static let filesPerNursery = 4096

    private let dataDirFD: Int32
    private var fd: Int32 = -1
    private var name = ""
    private var births = 0
    private var generation: UInt64 = 0

    init(dataDirFD: Int32) {
        self.dataDirFD = dataDirFD
        // Marks the data directory as a "top" directory: ext2/3/4 then spread its new subdirectories over block
        // groups with free inodes (Orlov) instead of putting them beside their parent, where the deleted files
        // were (measured after a deletion storm: 487 us per create in a new subdirectory without the flag, 16 us
        // with it). Other filesystems do not know the flag; failing to set it only costs speed.
        _ = twin_set_topdir(dataDirFD)
    }

    /// Creates and opens the data file `relativePath` (under the data directory), born in the nursery; nil when
    /// the nursery cannot be used (the caller creates the file in place) or the file already exists.
    func createData(named fileName: String, at relativePath: String) -> Int32? {
        if fd < 0 || births >= Self.filesPerNursery { renew() }
        guard fd >= 0 else { return nil }
        let file = openat(fd, fileName, O_RDWR | O_CLOEXEC | O_CREAT | O_EXCL, 0o600)
        guard file >= 0 else { return nil }
        births += 1
        guard twin_renameat2(fd, fileName, dataDirFD, relativePath, twin_RENAME_NOREPLACE) == 0 else {
            unlinkat(fd, fileName, 0)
            Glibc.close(file)
            return nil
        }
        return file
    }

    /// Starts a new nursery; the old one is empty (every file born there was renamed or removed) and goes.
    private func renew() {
        close()
        generation += 1
        name = "\(Self.prefix)\(getpid())-\(generation)"
        guard mkdirat(dataDirFD, name, 0o700) == 0 || errno == EEXIST else { return }
        fd = openat(dataDirFD, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        births = 0
    }

    func close() {
        guard fd >= 0 else { return }
        Glibc.close(fd)
        fd = -1
        unlinkat(dataDirFD, name, AT_REMOVEDIR)
    }

    /// Removes nurseries a crashed daemon left, with the never-named files in them.
    static func clearLeftovers(dataDirFD: Int32) {
        for name in entryNames(of: ".", in: dataDirFD) ?? [] where name.hasPrefix(prefix) {
            for file in entryNames(of: name, in: dataDirFD) ?? [] { unlinkat(dataDirFD, "\(name)/\(file)", 0) }
            unlinkat(dataDirFD, name, AT_REMOVEDIR)
        }
    }
}
