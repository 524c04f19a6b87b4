// CLinuxShims: Linux-only constants and calls that Swift's Glibc does not import
// (they need _GNU_SOURCE, which must never be defined in the CFuse3 shim).
#pragma once
#include <stdint.h>
#include <sys/types.h>

extern const int twin_O_PATH;
extern const int twin_O_DIRECT;
extern const int twin_O_NOATIME;
extern const int twin_SEEK_DATA;
extern const int twin_SEEK_HOLE;
extern const long twin_UTIME_NOW;
extern const long twin_UTIME_OMIT;
extern const unsigned twin_RENAME_NOREPLACE;
extern const unsigned twin_RENAME_EXCHANGE;
extern const unsigned twin_RENAME_WHITEOUT;
extern const int twin_FALLOC_FL_KEEP_SIZE;
extern const int twin_FALLOC_FL_PUNCH_HOLE;
extern const int twin_FALLOC_FL_ZERO_RANGE;
extern const int twin_XATTR_CREATE;
extern const int twin_XATTR_REPLACE;

int twin_fallocate(int fd, int mode, off_t offset, off_t len);
int twin_syncfs(int fd);
int twin_fdatasync(int fd);
/// statfs(2)'s f_type (the filesystem's magic number) of the filesystem holding `path`; -1 on error.
long twin_filesystem_type(const char *path);
/// sync_file_range over the whole file: start writeback only / write and wait (neither flushes the device).
int twin_start_write_out(int fd);
int twin_write_out(int fd);
int twin_pipe2_cloexec(int fds[2]);
ssize_t twin_splice(int fdin, off_t *offin, int fdout, off_t *offout, size_t len, unsigned int flags);
int twin_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags);
int twin_set_topdir(int fd);
