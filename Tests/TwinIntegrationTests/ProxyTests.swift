// The delaying TCP proxy that stands in for a WAN link in pair tests: it delays each direction by the asked
// amount, carries bytes unchanged, and cuts and heals the link on SIGUSR1/SIGUSR2.
import Foundation
import XCTest

final class ProxyTests: XCTestCase {
    static let proxyBinary = (Commands.twinfsBinary as NSString).deletingLastPathComponent + "/twinfs-proxy"

    func testTheProxyDelaysBothDirectionsAndCutsAndHealsTheLink() throws {
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: Self.proxyBinary), "no \(Self.proxyBinary): build it")
        // A python echo server behind the proxy; the script prints one line per finding and exits non-zero on a miss.
        let script = #"""
            import os, socket, subprocess, sys, threading, time, signal
            proxy = sys.argv[1]
            server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(8)
            def echo(c):
                while True:
                    d = c.recv(65536)
                    if not d: break
                    c.sendall(d)
                c.close()
            threading.Thread(target=lambda: [threading.Thread(target=echo, args=(server.accept()[0],), daemon=True).start() for _ in iter(int, 1)], daemon=True).start()
            p = subprocess.Popen([proxy, "--listen", "127.0.0.1:0", "--target", "127.0.0.1:%d" % server.getsockname()[1], "--delay-ms", "20"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            try:
                line = p.stdout.readline().split()
                assert line[:2] == ["twinfs-proxy:", "ready"], line
                port = int(line[2])
                def roundtrip(payload):
                    c = socket.create_connection(("127.0.0.1", port), timeout=5)
                    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    t = time.monotonic(); c.sendall(payload); got = b""
                    while len(got) < len(payload):
                        d = c.recv(1 << 20)
                        if not d: raise ConnectionError("closed")
                        got += d
                    c.close()
                    return got, (time.monotonic() - t) * 1000
                payload = os.urandom(300000)
                got, ms = roundtrip(payload)
                assert got == payload, "bytes changed in transit"
                assert ms >= 40, "round trip %.1f ms is shorter than 2 x 20 ms" % ms
                print("roundtrip_ms %.1f" % ms)
                p.send_signal(signal.SIGUSR1); time.sleep(0.3)
                try:
                    roundtrip(b"x"); cut_ok = False
                except (ConnectionError, OSError):
                    cut_ok = True
                assert cut_ok, "the cut link still carried data"
                print("cut refused")
                p.send_signal(signal.SIGUSR2); time.sleep(0.3)
                got, ms = roundtrip(b"healed")
                assert got == b"healed"
                print("healed roundtrip_ms %.1f" % ms)
            finally:
                p.terminate(); p.wait(5)
            """#
        let r = Commands.python(script, args: [Self.proxyBinary])
        XCTAssertSucceeds(r, "proxy behaviour")
        XCTAssertTrue(r.stdout.contains("cut refused"), "\(r)")
        XCTAssertTrue(r.stdout.contains("healed roundtrip_ms"), "\(r)")
    }
}
