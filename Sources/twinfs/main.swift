// twinfs: the command line. Owns: argument parsing, daemonizing, and turning errors into one clear line
// and an exit status. Never: filesystem or protocol logic.
import ArgumentParser
import Glibc
import TwinStore

struct Twinfs: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "twinfs",
        abstract: "A symmetric, asynchronously mirrored FUSE filesystem.",
        subcommands: [InitCommand.self, MountCommand.self, StatusCommand.self, PromoteCommand.self, ResolveCommand.self, VerifyCommand.self])
}

/// Prints one line `twinfs: error: ...` on stderr and exits 1.
func fail(_ message: String) -> Never {
    writeStderr("twinfs: error: \(message)\n")
    exit(1)
}

func writeStderr(_ text: String) {
    var bytes = Array(text.utf8)
    _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
}

do {
    var command = try Twinfs.parseAsRoot()
    try command.run()
} catch let error as StoreError {
    fail(error.description)
} catch let error as UsageError {
    fail(error.message)
} catch {
    // --help and --version are "errors" with exit code 0: print them whole.
    if Twinfs.exitCode(for: error) == .success {
        Twinfs.exit(withError: error)
    }
    let message = Twinfs.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
    let trimmed = message.hasPrefix("Error: ") ? String(message.dropFirst(7)) : message
    fail("\(trimmed) (see `twinfs --help`)")
}
