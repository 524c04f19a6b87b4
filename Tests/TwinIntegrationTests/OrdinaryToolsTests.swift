// The workflow a person runs against a mountpoint with ordinary tools: cp -a, diff -r, tar and rsync
// round trips, git, mv, rm -rf, chmod, chown, touch -d, truncate, dd conv=fsync, ln, ln -s, mkfifo,
// setfattr/getfattr, df. Each compares what the mount holds with a reference tree on the local disk,
// including metadata (modes, owners, sizes, nanosecond mtimes, symlink targets, hard-link groups, user
// xattrs). Never: compare against hard-coded listings; the local filesystem is the reference.
import Foundation
import XCTest

final class OrdinaryToolsTests: MountingTestCase {
    /// Bash functions shared by the scripts: a reference tree and comparisons of two trees.
    private let treeTools = #"""
    # make_tree DIR: files of awkward sizes, hard links, symlinks (relative, absolute, dangling, to a dir),
    # odd names, special modes, owners, fixed nanosecond times and user xattrs.
    make_tree() {
      local d=$1
      mkdir -p "$d/a/b/c" "$d/empty" "$d/with space" "$d/sticky"
      printf 'hello\n' > "$d/a/hello.txt"
      : > "$d/zero"
      head -c 65535 /dev/urandom > "$d/a/t-minus"
      head -c 65536 /dev/urandom > "$d/a/t-exact"
      head -c 65537 /dev/urandom > "$d/a/t-plus"
      head -c $((1048576 * 3 + 17)) /dev/urandom > "$d/a/b/big"
      seq 1 100000 > "$d/a/b/c/numbers"
      printf 'unicode\n' > "$d/with space/ünïcödé ☃.txt"
      printf 'long\n' > "$d/a/$(printf 'L%.0s' $(seq 1 255))"
      ln "$d/a/hello.txt" "$d/a/b/hard-1"
      ln "$d/a/hello.txt" "$d/hard-2"
      ln "$d/a/b/big" "$d/a/big-link"
      ln -s hello.txt "$d/a/rel-link"
      ln -s /etc/hostname "$d/abs-link"
      ln -s does-not-exist "$d/dangling"
      ln -s ../.. "$d/a/b/up"
      ln -s a/b "$d/dir-link"
      chmod 600 "$d/a/b/big"
      chmod 751 "$d/a/b"
      chmod 4755 "$d/a/t-exact"
      chmod 2750 "$d/a/b/c"
      chmod 1777 "$d/sticky"
      chmod 444 "$d/zero"
      chown 1234:5678 "$d/a/b/c/numbers"
      chown -h 4321:8765 "$d/a/rel-link"
      setfattr -n user.color -v blue "$d/a/hello.txt"
      setfattr -n user.empty "$d/a/t-plus"
      setfattr -n user.dir -v 0xdeadbeef "$d/a/b"
      find "$d" -depth -exec touch -h -d '2001-02-03 04:05:06.123456789' {} +
      touch -d '1999-12-31 23:59:59.987654321' "$d/a/hello.txt"
      touch -h -d '2020-05-06 07:08:09.5' "$d/dangling"
    }
    listing() { (cd "$1" && { find . ! -type d -printf '%p %y %m %U %G %s %T@ %l\n'; find . -type d -printf '%p %y %m %U %G %T@\n'; } | LC_ALL=C sort); }
    linkgroups() { (cd "$1" && find . -type f -links +1 -printf '%i %p\n' | LC_ALL=C sort -k2 | awk '{g[$1]=g[$1]" "$2} END{for(k in g) print g[k]}' | LC_ALL=C sort); }
    xattrs() { (cd "$1" && find . | LC_ALL=C sort | while IFS= read -r p; do getfattr -h -d -e hex -m '^user\.' -- "$p" 2>/dev/null || true; done); }
    # same A B: identical contents and metadata, or a diff on stderr and failure.
    same() {
      diff -r --no-dereference "$1" "$2" >&2 || { echo "contents differ: $1 $2" >&2; return 1; }
      diff <(listing "$1") <(listing "$2") >&2 || { echo "metadata differs: $1 $2" >&2; return 1; }
      diff <(linkgroups "$1") <(linkgroups "$2") >&2 || { echo "hard-link groups differ: $1 $2" >&2; return 1; }
      diff <(xattrs "$1") <(xattrs "$2") >&2 || { echo "xattrs differ: $1 $2" >&2; return 1; }
    }

    """#

    func testCpArchiveRoundTripKeepsContentsLinksAndMetadata() throws {
        let m = try freshMount()
        shell(treeTools + """
        make_tree "$S/src"
        cp -a "$S/src" "$M/copy"
        same "$S/src" "$M/copy"
        cp -a "$M/copy" "$S/back"
        same "$S/src" "$S/back"
        # a second copy inside the mount, from the mount
        cp -a "$M/copy" "$M/copy2"
        same "$S/src" "$M/copy2"
        """, in: m)
    }

    func testTarRoundTripThroughTheMount() throws {
        let m = try freshMount()
        shell(treeTools + """
        make_tree "$S/src"
        mkdir "$M/t" "$S/back"
        tar -C "$S/src" --xattrs --xattrs-include='user.*' -cpf - . | tar -C "$M/t" --xattrs --xattrs-include='user.*' -xpf -
        same "$S/src" "$M/t"
        tar -C "$M/t" --xattrs --xattrs-include='user.*' -cpf "$M/archive.tar" .
        tar -C "$S/back" --xattrs --xattrs-include='user.*' -xpf "$M/archive.tar"
        same "$S/src" "$S/back"
        # the archive made from the mount lists the same entries as one made from the source
        diff <(tar -C "$S/src" -cf - . | tar -tvf - | awk '{print $1, $2, $3, $6}' | LC_ALL=C sort) \\
             <(tar -tvf "$M/archive.tar" | awk '{print $1, $2, $3, $6}' | LC_ALL=C sort)
        """, in: m)
    }

    func testRsyncArchiveRoundTripIsCompleteAndIdempotent() throws {
        let m = try freshMount()
        shell(treeTools + """
        make_tree "$S/src"
        rsync -aHX "$S/src/" "$M/r/"
        same "$S/src" "$M/r"
        # nothing left to transfer: sizes and nanosecond mtimes survived
        changes=$(rsync -aHXi "$S/src/" "$M/r/")
        [ -z "$changes" ] || { echo "second rsync still changed: $changes" >&2; exit 1; }
        rsync -aHX "$M/r/" "$S/back/"
        same "$S/src" "$S/back"
        # an update in place: rsync rewrites through a temp file and renames over the old one
        printf 'changed\\n' >> "$S/src/a/b/c/numbers"
        touch -d '2002-02-02 02:02:02' "$S/src/a/b/c/numbers" "$S/src/a/b/c"
        rsync -aHX --delete "$S/src/" "$M/r/"
        same "$S/src" "$M/r"
        differing=$(rsync -aHX --checksum --dry-run -i "$S/src/" "$M/r/")
        [ -z "$differing" ] || { echo "checksums differ after update: $differing" >&2; exit 1; }
        """, in: m)
    }

    func testGitInitAddCommitBranchAndCheckout() throws {
        let m = try freshMount()
        shell("""
        cd "$M"
        git init -q -b main repo
        cd repo
        for i in $(seq 1 40); do mkdir -p "dir$((i % 7))"; seq 1 $((i * 50)) > "dir$((i % 7))/file$i.txt"; done
        ln -s dir1/file1.txt link
        chmod +x dir2/file2.txt
        git add -A
        git commit -q -m first
        git checkout -q -b feature
        echo feature >> dir3/file3.txt
        git mv dir4/file4.txt moved.txt
        git rm -q dir5/file5.txt
        git commit -q -am second
        git checkout -q main
        [ "$(tail -n1 dir3/file3.txt)" = "150" ]
        [ -e dir4/file4.txt ] && [ ! -e moved.txt ] && [ -e dir5/file5.txt ]
        git checkout -q feature
        [ "$(tail -n1 dir3/file3.txt)" = "feature" ]
        [ ! -e dir4/file4.txt ] && [ -e moved.txt ] && [ ! -e dir5/file5.txt ]
        [ -x dir2/file2.txt ] && [ "$(readlink link)" = "dir1/file1.txt" ]
        [ -z "$(git status --porcelain)" ]
        [ "$(git rev-list --count HEAD)" = "2" ]
        git gc -q
        git fsck --full --strict
        git clone -q "$M/repo" "$S/clone"
        diff -r --exclude=.git "$M/repo" "$S/clone"
        """, in: m)
    }

    func testMoveRemoveChmodChownTouchTruncateDdAndLinks() throws {
        let m = try freshMount()
        shell("""
        cd "$M"
        mkdir -p one/deep two
        printf 'payload\\n' > one/deep/f
        mv one/deep/f two/g
        [ ! -e one/deep/f ] && [ "$(cat two/g)" = payload ]
        mv one/deep two/
        [ -d two/deep ] && [ ! -e one/deep ]
        printf 'new\\n' > one/replacement
        mv one/replacement two/g
        [ "$(cat two/g)" = new ] && [ ! -e one/replacement ]
        # rm -rf of a populated tree
        mkdir -p tree/x/y/z && for i in $(seq 1 200); do echo $i > tree/x/y/z/f$i; echo $i > tree/f$i; done
        ln -s x tree/sl && ln tree/f1 tree/x/hl
        rm -rf tree
        [ ! -e tree ]
        # chmod and chown (as root to other ids)
        touch perm
        chmod 640 perm; [ "$(stat -c %a perm)" = 640 ]
        chmod u+x,g-r perm; [ "$(stat -c %a perm)" = 700 ]
        chmod 2755 two; [ "$(stat -c %a two)" = 2755 ]
        chown 1234:5678 perm; [ "$(stat -c %u:%g perm)" = 1234:5678 ]
        chown 99 perm; [ "$(stat -c %u:%g perm)" = 99:5678 ]
        chgrp 77 perm; [ "$(stat -c %u:%g perm)" = 99:77 ]
        ln -s perm plink; chown -h 555:666 plink
        [ "$(stat -c %u:%g plink)" = 555:666 ] && [ "$(stat -c %u:%g perm)" = 99:77 ]
        # touch -d
        touch -d '2010-10-10 10:10:10.123456789' perm
        [ "$(stat -c %y perm)" = "2010-10-10 10:10:10.123456789 +0000" ]
        touch -a -d '2011-01-01 00:00:00' perm
        [ "$(stat -c %x perm)" = "2011-01-01 00:00:00.000000000 +0000" ]
        [ "$(stat -c %y perm)" = "2010-10-10 10:10:10.123456789 +0000" ]
        # truncate grows with zeros and shrinks
        printf 'abcdef' > t
        truncate -s 10 t; [ "$(stat -c %s t)" = 10 ]; [ "$(od -An -c t | tr -d ' \\n')" = 'abcdef\\0\\0\\0\\0' ]
        truncate -s 3 t; [ "$(cat t)" = abc ]
        truncate -s 0 t; [ ! -s t ]
        truncate -s 5G sparse5g; [ "$(stat -c %s sparse5g)" = 5368709120 ]
        # dd with conv=fsync
        head -c $((5 * 1048576 + 123)) /dev/urandom > "$S/dd.src"
        dd if="$S/dd.src" of=dd.out bs=64k conv=fsync status=none
        cmp "$S/dd.src" dd.out
        dd if="$S/dd.src" of=dd.out bs=4k seek=3 count=10 conv=fsync,notrunc status=none
        cmp <(head -c 12288 "$S/dd.src"; head -c 40960 "$S/dd.src"; tail -c +53249 "$S/dd.src") dd.out
        # ln and ln -s
        ln dd.out hard; [ "$(stat -c %h dd.out)" = 2 ] && [ "$(stat -c %i dd.out)" = "$(stat -c %i hard)" ]
        ln -s dd.out soft; [ "$(readlink soft)" = dd.out ] && cmp soft dd.out
        ln -sf two/g soft; [ "$(readlink soft)" = two/g ]
        rm dd.out; [ "$(stat -c %h hard)" = 1 ] && cmp hard <(head -c 12288 "$S/dd.src"; head -c 40960 "$S/dd.src"; tail -c +53249 "$S/dd.src")
        """, in: m)
    }

    func testFifoAndUnixSocketNodes() throws {
        let m = try freshMount()
        shell("""
        cd "$M"
        mkfifo -m 640 pipe
        [ "$(stat -c %F:%a pipe)" = "fifo:640" ]
        ( printf 'through the fifo\\n' > pipe ) &
        [ "$(cat pipe)" = "through the fifo" ]
        wait
        /usr/bin/python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])' "$M/sock"
        [ "$(stat -c %F sock)" = "socket" ]
        mknod chr c 1 3 && [ "$(stat -c %F:%t:%T chr)" = "character special file:1:3" ]
        rm pipe sock chr
        [ -z "$(ls -A)" ]
        """, in: m)
    }

    func testSetfattrGetfattrAndDf() throws {
        let m = try freshMount()
        shell("""
        cd "$M"
        echo x > f && mkdir d
        setfattr -n user.one -v first f
        setfattr -n user.two -v 0x00ff00 f
        setfattr -n user.tag -v dir d
        [ "$(getfattr --only-values -n user.one f)" = first ]
        [ "$(getfattr -e hex --only-values -n user.two f | od -An -tx1 | tr -d ' \\n')" = 00ff00 ]
        [ "$(getfattr -d -m '^user\\.' --absolute-names f | grep -c '^user\\.')" = 2 ]
        setfattr -x user.one f
        ! getfattr -n user.one f 2>/dev/null
        [ "$(getfattr --only-values -n user.tag d)" = dir ]
        # df sees the mount with a sane size and free space
        df -P "$M" | tail -n1 | awk -v m="$M" '$6 == m && $2 > 0 && $4 > 0 && $4 <= $2 { ok = 1 } END { exit !ok }'
        df -i "$M" > /dev/null
        [ "$(stat -f -c %l "$M")" -ge 255 ]
        """, in: m)
    }
}
