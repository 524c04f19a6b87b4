// Running programs for the integration tests: the twinfs binary built beside this test bundle, shell
// snippets (as root or as another uid via setpriv), and small tools. Output goes to files, never to pipes
// that nobody drains, and every run has a deadline after which the child is killed by its own pid.
// Never: kill anything this file did not start, or look for processes by name.
import Foundation
import XCTest

/// What a finished command left behind.
struct CommandResult: CustomStringConvertible {
    let command: [String]
    let status: Int32
    let killedBySignal: Bool
    let stdout: String
    let stderr: String

    var ok: Bool { status == 0 && !killedBySignal }
    var stdoutLines: [String] { stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init).filter { !$0.isEmpty } }
    var stderrLines: [String] { stderr.split(separator: "\n", omittingEmptySubsequences: false).map(String.init).filter { !$0.isEmpty } }

    var description: String {
        "`\(command.joined(separator: " "))` -> \(killedBySignal ? "signal " : "exit ")\(status)\n--- stdout ---\n\(stdout)--- stderr ---\n\(stderr)"
    }
}

enum Commands {
    /// A PATH that does not depend on the developer's shell setup (pyenv shims and the like).
    static let path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    /// The environment every child gets: C locale so error texts are stable, no inherited git config.
    static func environment(home: String) -> [String: String] {
        var env: [String: String] = [
            "PATH": path, "LC_ALL": "C", "LANG": "C", "HOME": home, "TZ": "UTC",
            "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "twinfs test", "GIT_AUTHOR_EMAIL": "test@twinfs.invalid",
            "GIT_COMMITTER_NAME": "twinfs test", "GIT_COMMITTER_EMAIL": "test@twinfs.invalid",
        ]
        if let bin = ProcessInfo.processInfo.environment["TWINFS_BINARY"] { env["TWINFS_BINARY"] = bin }
        return env
    }

    /// The twinfs executable: TWINFS_BINARY if set, else `twinfs` in the directory of the running test
    /// bundle (swift build puts both in the same .build/<config> directory).
    static let twinfsBinary: String = {
        if let explicit = ProcessInfo.processInfo.environment["TWINFS_BINARY"], !explicit.isEmpty { return explicit }
        var candidates: [String] = []
        if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            candidates.append((exe as NSString).deletingLastPathComponent)
        }
        candidates.append(Bundle.main.bundleURL.path)
        candidates.append(Bundle.main.bundleURL.deletingLastPathComponent().path)
        for bundle in Bundle.allBundles where bundle.bundlePath.hasSuffix(".xctest") {
            candidates.append((bundle.bundlePath as NSString).deletingLastPathComponent)
        }
        for dir in candidates {
            let p = (dir as NSString).appendingPathComponent("twinfs")
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: p, isDirectory: &isDir), !isDir.boolValue,
                FileManager.default.isExecutableFile(atPath: p)
            {
                return p
            }
        }
        return (candidates.first.map { ($0 as NSString).appendingPathComponent("twinfs") }) ?? "twinfs"
    }()

    /// Runs `argv` to completion (or until `timeoutSeconds`, then SIGKILL of that child) with output captured
    /// through temporary files. posix_spawn and waitpid on the child's own pid, not Foundation.Process: Process
    /// learns of an exit through a socket the child inherits, so a command that leaves a daemon behind (twinfs
    /// mount without -f) would never be seen to exit. The child gets stdin from /dev/null and no other
    /// descriptor of this process.
    @discardableResult
    static func run(_ argv: [String], home: String = "/tmp", timeoutSeconds: Double = 300) -> CommandResult {
        precondition(!argv.isEmpty, "a command needs a program")
        var template = Array("/tmp/twinfs-cmd-XXXXXX".utf8CString)
        guard let dirPtr = mkdtemp(&template) else {
            return CommandResult(command: argv, status: 127, killedBySignal: false, stdout: "", stderr: "mkdtemp failed\n")
        }
        let scratch = String(cString: dirPtr)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let outPath = scratch + "/out", errPath = scratch + "/err"
        let outFD = open(outPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        let errFD = open(errPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        defer { close(outFD); close(errFD) }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, outFD, 1)
        posix_spawn_file_actions_adddup2(&actions, errFD, 2)
        closeFrom(&actions, 3)

        let program = argv[0].hasPrefix("/") ? argv : ["/usr/bin/env"] + argv
        let cArgs = program.map { strdup($0) } + [nil]
        let cEnv = environment(home: home).map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for p in cArgs + cEnv { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, program[0], &actions, nil, cArgs, cEnv)
        guard rc == 0 else {
            return CommandResult(command: argv, status: 127, killedBySignal: false, stdout: "",
                                 stderr: "cannot start \(program[0]): \(String(cString: strerror(rc)))\n")
        }
        let child = pid, box = ExitBox()
        let exited = DispatchSemaphore(value: 0)
        let waiter = Thread {
            var st: Int32 = 0
            while waitpid(child, &st, 0) < 0 && errno == EINTR {}
            box.status = st
            exited.signal()
        }
        waiter.start()
        var timedOut = false
        if exited.wait(timeout: .now() + timeoutSeconds) == .timedOut {
            timedOut = true
            kill(pid, SIGKILL)
            exited.wait()
        }
        let status = box.status
        let so = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
        var se = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
        if timedOut { se += "\n[killed after \(timeoutSeconds) s]\n" }
        let signaled = (status & 0x7f) != 0 && (status & 0x7f) != 0x7f
        return CommandResult(command: argv, status: signaled ? status & 0x7f : (status >> 8) & 0xff,
                             killedBySignal: signaled, stdout: so, stderr: se)
    }

    /// posix_spawn_file_actions_addclosefrom_np (glibc 2.34+), looked up at run time since Glibc's module
    /// does not export it.
    private typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    private static let addCloseFrom: AddCloseFrom? = {
        dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np").map {
            unsafeBitCast($0, to: AddCloseFrom.self)
        }
    }()

    private static func closeFrom(_ actions: UnsafeMutablePointer<posix_spawn_file_actions_t>, _ fd: Int32) {
        if let f = addCloseFrom { _ = f(actions, fd) }
    }

    /// `twinfs ARGS...`
    @discardableResult
    static func twinfs(_ args: [String], timeoutSeconds: Double = 120) -> CommandResult {
        run([twinfsBinary] + args, timeoutSeconds: timeoutSeconds)
    }

    /// Runs a bash script with `set -euo pipefail`; as `user` (uid, gid, no supplementary groups) if given.
    @discardableResult
    static func sh(_ script: String, as user: (uid: uid_t, gid: gid_t)? = nil, home: String = "/tmp",
                   timeoutSeconds: Double = 300) -> CommandResult {
        // The ERR trap names the command that failed, since `[ ... ]` checks fail silently otherwise.
        let prelude = "set -Eeuo pipefail\ntrap 'echo \"script failed at: $BASH_COMMAND (exit $?)\" >&2' ERR\n"
        var argv = ["/bin/bash", "-c", prelude + script]
        if let user {
            argv = ["/usr/bin/setpriv", "--reuid=\(user.uid)", "--regid=\(user.gid)", "--clear-groups", "--"] + argv
        }
        return run(argv, home: home, timeoutSeconds: timeoutSeconds)
    }

    /// Runs a python3 snippet (the system interpreter, readable by every uid) as `user`, for checks that need
    /// an exact errno from one syscall.
    @discardableResult
    static func python(_ code: String, as user: (uid: uid_t, gid: gid_t)? = nil, args: [String] = []) -> CommandResult {
        var argv = ["/usr/bin/python3", "-c", code] + args
        if let user {
            argv = ["/usr/bin/setpriv", "--reuid=\(user.uid)", "--regid=\(user.gid)", "--clear-groups", "--"] + argv
        }
        return run(argv)
    }
}

/// A child's wait status, handed from the waiting thread (the semaphore orders the accesses).
private final class ExitBox: @unchecked Sendable {
    var status: Int32 = 0
}

/// Asserts that a command succeeded, printing everything it said if not.
func XCTAssertSucceeds(_ r: CommandResult, _ message: String = "", file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertTrue(r.ok, "\(message)\n\(r)", file: file, line: line)
}

/// The CLI contract for a refused command: exit status 1, exactly one line on stderr that starts with
/// `twinfs: error: ` and says something, nothing on stdout. `mentioning` are words the line must contain
/// (case-insensitive), typically the path that is wrong.
func XCTAssertCLIError(
    _ r: CommandResult, mentioning: [String] = [], file: StaticString = #filePath, line: UInt = #line
) {
    XCTAssertFalse(r.killedBySignal, "twinfs died of a signal\n\(r)", file: file, line: line)
    XCTAssertEqual(r.status, 1, "exit status\n\(r)", file: file, line: line)
    XCTAssertEqual(r.stderrLines.count, 1, "exactly one line on stderr\n\(r)", file: file, line: line)
    let msg = r.stderrLines.first ?? ""
    XCTAssertTrue(msg.hasPrefix("twinfs: error: "), "error line format: \(msg)", file: file, line: line)
    XCTAssertGreaterThan(msg.count, "twinfs: error: ".count + 5, "error line says what is wrong: \(msg)", file: file, line: line)
    for word in mentioning {
        XCTAssertTrue(msg.lowercased().contains(word.lowercased()), "error line mentions \(word): \(msg)", file: file, line: line)
    }
    XCTAssertFalse(r.stdout.contains("twinfs: ready"), "a refused mount never says ready\n\(r)", file: file, line: line)
}
