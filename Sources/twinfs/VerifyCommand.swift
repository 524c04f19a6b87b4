// `twinfs verify STORE|MNT [--repair] [--json]`: asks the daemon of a mounted paired store to compare every
// location with the peer's copy (Docs/OPERATIONS.md "Verify and repair"), waits for the end and prints the
// differences by path. The daemon's side is in Verification.swift.
// Never: compare anything itself (TwinNode's Verifier does), or hold the control socket while a verify runs
// (the request starts it; the command polls for the report).
import ArgumentParser
import Dispatch
import Foundation
import Glibc
import MirrorCore
import PeerLink
import TwinNode
import TwinStore

struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Compare every location of a mounted store with the peer's copy; optionally repair.",
        discussion: """
            The daemon serving the store walks its locations, compares version and checksum with the peer's copy
            of each, and reports by path: a corruption (same version, different bytes; the copy that disagrees with
            the checksum its node recorded is the corrupt one) or a missed copy (different versions that no bitmap
            accounts for). Writes in flight are never reported. With --repair the good copy wins: a corrupt copy takes
            the other node's bytes, a missed copy the newer version. Progress shows in `twinfs status` (verify.*).
            Exit status: 0 when nothing differs (or everything was repaired), 2 when differences remain, 1 on error.
            """)

    @Argument(help: "The store directory, or the mountpoint of a mounted store.")
    var store: String

    @Flag(help: "Repair what differs from the node with the good copy.")
    var repair = false

    @Flag(help: "Print JSON.")
    var json = false

    static let pollMs: UInt32 = 200

    func run() throws {
        let path = absolute(storeOfMountpoint(absolute(store)) ?? store)
        let identity = try Store.readIdentity(at: path)
        guard identity.pairing != nil else { throw UsageError(message: "store \(path) is not paired: there is no peer copy to verify against") }
        let start = try Self.ask(path, repair ? "verify repair" : "verify")
        if let error = start["error"] as? String { throw UsageError(message: "cannot verify \(path): \(error)") }
        guard let run = start["run"] as? Int else { throw UsageError(message: "the daemon serving \(path) gave an unreadable answer") }
        if start["started"] as? Bool == false {
            writeStderr("twinfs: a verify was already running on \(path); waiting for its report\n")
        }
        var report: [String: Any]
        let showProgress = isatty(2) != 0
        while true {
            report = try Self.ask(path, "verify report")
            if (report["runs"] as? Int ?? 0) >= run, report["active"] as? Bool == false, report["finished"] as? Bool == true { break }
            if showProgress {
                writeStderr("\rverify: \(report["checked"] as? Int ?? 0)/\(report["total"] as? Int ?? 0) locations, \(report["differences"] as? Int ?? 0) differences ")
            }
            usleep(Self.pollMs * 1000)
        }
        if showProgress { writeStderr("\r\u{1B}[K") }
        if json {
            print(String(decoding: try JSONSerialization.data(withJSONObject: report, options: [.sortedKeys]), as: UTF8.self))
        } else {
            print(Self.describe(report, node: identity.nodeName, path: path))
        }
        if let error = report["error"] as? String { throw UsageError(message: "verify of \(path) stopped: \(error)") }
        let differences = report["differences"] as? Int ?? 0
        let repaired = report["repaired"] as? Int ?? 0
        if differences > repaired { Twinfs.exit(withError: ExitCode(2)) }
    }

    static func ask(_ path: String, _ request: String) throws -> [String: Any] {
        guard let bytes = ControlServer.query(storePath: path, request: request, timeoutMs: 10_000) else {
            throw UsageError(message: "store \(path) is not mounted: verify runs in the daemon of a mounted store")
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
            throw UsageError(message: "the daemon serving \(path) gave an unreadable answer")
        }
        return object
    }

    static func describe(_ report: [String: Any], node: String, path: String) -> String {
        let checked = report["checked"] as? Int ?? 0
        let differences = report["differences"] as? Int ?? 0
        let repaired = report["repaired"] as? Int ?? 0
        let seconds = Double(report["elapsedMs"] as? Int ?? 0) / 1000
        var lines = ["verify of \(path) (\(node)): \(checked) locations checked in \(String(format: "%.1f", seconds)) s, "
                     + "\(differences) difference\(differences == 1 ? "" : "s")"
                     + (report["repair"] as? Bool == true ? ", \(repaired) repaired" : "")
                     + ", \(report["skippedInFlight"] as? Int ?? 0) skipped while being copied"]
        for d in report["report"] as? [[String: Any]] ?? [] {
            let kind = d["kind"] as? String ?? "?"
            let side = d["side"] as? String ?? "?"
            let which = kind == "corruption" ? "corrupt copy: \(side)" : "newer copy: \(side)"
            lines.append("  \(kind) \(d["path"] as? String ?? "?") (\(d["location"] as? String ?? "?"); \(which)): \(d["detail"] as? String ?? "")"
                         + (d["repaired"] as? Bool == true ? " [repaired]" : ""))
        }
        if report["reportTruncated"] as? Bool == true { lines.append("  (more differences than listed)") }
        if differences == 0 && report["error"] == nil { lines.append("clean: every location of this node matches the peer's copy") }
        return lines.joined(separator: "\n")
    }
}
