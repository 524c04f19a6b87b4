// CFuse3: the libfuse3 low-level API as Swift sees it. Never define _GNU_SOURCE here
// (it breaks fd_set under Swift's Glibc); Linux-only names live in CLinuxShims.
#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>
