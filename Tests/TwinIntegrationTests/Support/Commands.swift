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
    /// through temporary files.
    @discardableResult
    static func run(
        _ argv: [String], stdin: String? = nil, cwd: String? = nil, home: String = "/tmp",
        timeoutSeconds: Double = 300
    ) -> CommandResult {
        precondition(!argv.isEmpty, "a command needs a program")
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("twinfs-cmd-\(UUID().uuidString)")
        try! FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }
        let outURL = scratch.appendingPathComponent("out"), errURL = scratch.appendingPathComponent("err")
        _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
        let out = try! FileHandle(forWritingTo: outURL), err = try! FileHandle(forWritingTo: errURL)
        defer { try? out.close(); try? err.close() }

        let p = Process()
        p.executableURL = URL(fileURLWithPath: argv[0].hasPrefix("/") ? argv[0] : "/usr/bin/env")
        p.arguments = argv[0].hasPrefix("/") ? Array(argv.dropFirst()) : argv
        p.environment = environment(home: home)
        if let cwd { p.currentDirectoryURL = URL(fileURLWithPath: cwd) }
        p.standardOutput = out
        p.standardError = err
        let input = Pipe()
        p.standardInput = stdin == nil ? FileHandle(forReadingAtPath: "/dev/null") : input
        let done = DispatchSemaphore(value: 0)
        p.terminationHandler = { _ in done.signal() }
        do { try p.run() } catch {
            return CommandResult(command: argv, status: 127, killedBySignal: false, stdout: "", stderr: "cannot start: \(error)\n")
        }
        if let stdin {
            input.fileHandleForWriting.write(stdin.data(using: .utf8)!)
            try? input.fileHandleForWriting.close()
        }
        if done.wait(timeout: .now() + timeoutSeconds) == .timedOut {
            kill(p.processIdentifier, SIGKILL)
            done.wait()
        }
        let so = (try? String(contentsOf: outURL, encoding: .utf8)) ?? ""
        var se = (try? String(contentsOf: errURL, encoding: .utf8)) ?? ""
        if p.terminationReason == .uncaughtSignal && p.terminationStatus == SIGKILL { se += "\n[killed after \(timeoutSeconds) s]\n" }
        return CommandResult(
            command: argv, status: p.terminationStatus, killedBySignal: p.terminationReason == .uncaughtSignal,
            stdout: so, stderr: se)
    }

    /// `twinfs ARGS...`
    @discardableResult
    static func twinfs(_ args: [String], timeoutSeconds: Double = 120) -> CommandResult {
        run([twinfsBinary] + args, timeoutSeconds: timeoutSeconds)
    }

    /// Runs a bash script with `set -euo pipefail`; as `user` (uid, gid, no supplementary groups) if given.
    @discardableResult
    static func sh(_ script: String, as user: (uid: uid_t, gid: gid_t)? = nil, cwd: String? = nil, home: String = "/tmp",
                   timeoutSeconds: Double = 300) -> CommandResult {
        // The ERR trap names the command that failed, since `[ ... ]` checks fail silently otherwise.
        let prelude = "set -Eeuo pipefail\ntrap 'echo \"script failed at: $BASH_COMMAND (exit $?)\" >&2' ERR\n"
        var argv = ["/bin/bash", "-c", prelude + script]
        if let user {
            argv = ["/usr/bin/setpriv", "--reuid=\(user.uid)", "--regid=\(user.gid)", "--clear-groups", "--"] + argv
        }
        return run(argv, cwd: cwd, home: home, timeoutSeconds: timeoutSeconds)
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
