#define _GNU_SOURCE
#include "CLinuxShims.h"
#include <fcntl.h>
#include <unistd.h>
#include <stdio.h>
#include <sys/stat.h>
#include <linux/fs.h>
#include <linux/falloc.h>
#include <sys/xattr.h>
#include <sys/ioctl.h>
#include <sys/vfs.h>

const int twin_O_PATH = O_PATH;
const int twin_O_DIRECT = O_DIRECT;
const int twin_O_NOATIME = O_NOATIME;
const int twin_SEEK_DATA = SEEK_DATA;
const int twin_SEEK_HOLE = SEEK_HOLE;
const long twin_UTIME_NOW = UTIME_NOW;
const long twin_UTIME_OMIT = UTIME_OMIT;
const unsigned twin_RENAME_NOREPLACE = RENAME_NOREPLACE;
const unsigned twin_RENAME_EXCHANGE = RENAME_EXCHANGE;
const unsigned twin_RENAME_WHITEOUT = RENAME_WHITEOUT;
const int twin_FALLOC_FL_KEEP_SIZE = FALLOC_FL_KEEP_SIZE;
const int twin_FALLOC_FL_PUNCH_HOLE = FALLOC_FL_PUNCH_HOLE;
const int twin_FALLOC_FL_ZERO_RANGE = FALLOC_FL_ZERO_RANGE;
const int twin_XATTR_CREATE = XATTR_CREATE;
const int twin_XATTR_REPLACE = XATTR_REPLACE;

int twin_fallocate(int fd, int mode, off_t offset, off_t len) { return fallocate(fd, mode, offset, len); }
int twin_syncfs(int fd) { return syncfs(fd); }
int twin_fdatasync(int fd) { return fdatasync(fd); }
long twin_filesystem_type(const char *path) {
    struct statfs fs;
    return statfs(path, &fs) == 0 ? (long)fs.f_type : -1;
}
int twin_start_write_out(int fd) { return sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE); }
int twin_write_out(int fd) {
    return sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
}
int twin_pipe2_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }
ssize_t twin_splice(int fdin, off_t *offin, int fdout, off_t *offout, size_t len, unsigned int flags) {
    return splice(fdin, offin, fdout, offout, len, flags);
}
int twin_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags) {
    return renameat2(olddirfd, oldpath, newdirfd, newpath, flags);
}
int twin_set_topdir(int fd) {
    int flags = 0;
    if (ioctl(fd, FS_IOC_GETFLAGS, &flags) != 0) return -1;
    if (flags & FS_TOPDIR_FL) return 0;
    flags |= FS_TOPDIR_FL;
    return ioctl(fd, FS_IOC_SETFLAGS, &flags);
}
