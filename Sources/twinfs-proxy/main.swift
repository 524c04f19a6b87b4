// twinfs-proxy: a delaying TCP proxy that stands in for a WAN link between two twinfs daemons in tests and
// benchmarks (tc netem does not exist on these machines). Every byte is held for --delay-ms in each direction,
// optionally paced to --rate-mbps; SIGUSR1 cuts the link (all connections closed, new ones refused), SIGUSR2
// heals it. Never: look inside the traffic, or listen anywhere but the address it is given.
import Glibc

struct Options {
    var listenHost = "127.0.0.1"
    var listenPort: UInt16 = 0
    var targetHost = "127.0.0.1"
    var targetPort: UInt16 = 0
    var delayMs = 0
    var rateMbps = 0.0
}

func usage() -> Never {
    let text = """
        usage: twinfs-proxy --listen HOST:PORT --target HOST:PORT [--delay-ms N] [--rate-mbps R]
          Delays every byte by N ms each way (and paces to R Mbit/s if given). Prints `twinfs-proxy: ready PORT`
          once listening (PORT 0 picks a free one). SIGUSR1 cuts the link, SIGUSR2 heals it, SIGTERM stops.

        """
    fputs(text, stderr)
    exit(2)
}

func parseEndpoint(_ s: String) -> (String, UInt16)? {
    guard let colon = s.lastIndex(of: ":"), let port = UInt16(s[s.index(after: colon)...]) else { return nil }
    return (String(s[..<colon]), port)
}

var options = Options()
var args = CommandLine.arguments.dropFirst()
while let arg = args.popFirst() {
    guard let value = args.popFirst() else { usage() }
    switch arg {
    case "--listen":
        guard let e = parseEndpoint(value) else { usage() }
        (options.listenHost, options.listenPort) = e
    case "--target":
        guard let e = parseEndpoint(value), e.1 != 0 else { usage() }
        (options.targetHost, options.targetPort) = e
    case "--delay-ms":
        guard let v = Int(value), v >= 0, v <= 60_000 else { usage() }
        options.delayMs = v
    case "--rate-mbps":
        guard let v = Double(value), v >= 0 else { usage() }
        options.rateMbps = v
    default: usage()
    }
}
if options.targetPort == 0 { usage() }

func nowNs() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

func sleepUntil(_ deadlineNs: UInt64) {
    let now = nowNs()
    guard deadlineNs > now else { return }
    var ts = timespec(tv_sec: Int((deadlineNs - now) / 1_000_000_000), tv_nsec: Int((deadlineNs - now) % 1_000_000_000))
    nanosleep(&ts, nil)
}

func address(_ host: String, _ port: UInt16) -> sockaddr_in {
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_port = port.bigEndian
    guard inet_pton(AF_INET, host == "localhost" ? "127.0.0.1" : host, &a.sin_addr) == 1 else {
        fputs("twinfs-proxy: not an IPv4 address: \(host)\n", stderr)
        exit(2)
    }
    return a
}

/// The link's state, shared by all pumps: a generation that changes on every cut closes old connections.
final class Link: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var generation = 0
    private var isCut = false
    private var sockets: Set<Int32> = []
    init() { pthread_mutex_init(&mutex, nil) }

    func register(_ fds: [Int32]) -> Bool {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        if isCut { return false }
        sockets.formUnion(fds)
        return true
    }

    func unregister(_ fd: Int32) {
        pthread_mutex_lock(&mutex)
        sockets.remove(fd)
        pthread_mutex_unlock(&mutex)
    }

    func cut(_ cut: Bool) {
        pthread_mutex_lock(&mutex)
        isCut = cut
        if cut {
            // shutdown() wakes every pump blocked on these sockets; each closes its own side.
            for fd in sockets { shutdown(fd, Int32(SHUT_RDWR)) }
        }
        pthread_mutex_unlock(&mutex)
    }
}

let link = Link()

/// Copies one direction: a reader thread timestamps chunks, the writer releases each `delayMs` later.
final class Pump: @unchecked Sendable {
    let from: Int32
    let to: Int32
    private var mutex = pthread_mutex_t()
    private var cond = pthread_cond_t()
    private var queue: [(due: UInt64, bytes: [UInt8])] = []
    private var queuedBytes = 0
    private var eof = false
    static let maxQueuedBytes = 64 << 20  // the link's "buffer": readers wait when it is full

    init(from: Int32, to: Int32) {
        self.from = from
        self.to = to
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&cond, nil)
    }

    func readLoop() {
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let n = read(from, &buffer, buffer.count)
            pthread_mutex_lock(&mutex)
            if n <= 0 {
                eof = true
                pthread_cond_broadcast(&cond)
                pthread_mutex_unlock(&mutex)
                return
            }
            while queuedBytes > Self.maxQueuedBytes && !eof { pthread_cond_wait(&cond, &mutex) }
            queue.append((nowNs() + UInt64(options.delayMs) * 1_000_000, Array(buffer[0..<n])))
            queuedBytes += n
            pthread_cond_broadcast(&cond)
            pthread_mutex_unlock(&mutex)
        }
    }

    func writeLoop() {
        var paceNs = nowNs()
        while true {
            pthread_mutex_lock(&mutex)
            while queue.isEmpty && !eof { pthread_cond_wait(&cond, &mutex) }
            if queue.isEmpty {
                pthread_mutex_unlock(&mutex)
                shutdown(to, Int32(SHUT_WR))
                return
            }
            let chunk = queue.removeFirst()
            queuedBytes -= chunk.bytes.count
            pthread_cond_broadcast(&cond)
            pthread_mutex_unlock(&mutex)
            sleepUntil(chunk.due)
            if options.rateMbps > 0 {
                paceNs = max(paceNs, nowNs()) + UInt64(Double(chunk.bytes.count * 8) / options.rateMbps * 1000)
                sleepUntil(paceNs)
            }
            var offset = 0
            while offset < chunk.bytes.count {
                let w = chunk.bytes[offset...].withUnsafeBytes { send(to, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if w <= 0 {
                    shutdown(from, Int32(SHUT_RDWR))
                    pthread_mutex_lock(&mutex)
                    eof = true
                    queue.removeAll()
                    pthread_cond_broadcast(&cond)
                    pthread_mutex_unlock(&mutex)
                    return
                }
                offset += w
            }
        }
    }
}

func spawn(_ body: @escaping () -> Void) {
    final class Box { let body: () -> Void; init(_ b: @escaping () -> Void) { body = b } }
    var thread = pthread_t()
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    pthread_create(&thread, nil, { raw in
        let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
        box.body()
        return nil
    }, box)
    pthread_detach(thread)
}

func serve(client: Int32) {
    let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var target = address(options.targetHost, options.targetPort)
    let connected = withUnsafePointer(to: &target) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0, link.register([client, upstream]) else {
        close(upstream)
        close(client)
        return
    }
    var one: Int32 = 1
    for fd in [client, upstream] { setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size)) }
    let up = Pump(from: client, to: upstream)
    let down = Pump(from: upstream, to: client)
    var finished = 0
    var mutex = pthread_mutex_t()
    pthread_mutex_init(&mutex, nil)
    let done: () -> Void = {
        pthread_mutex_lock(&mutex)
        finished += 1
        let last = finished == 2
        pthread_mutex_unlock(&mutex)
        if last {
            link.unregister(client)
            link.unregister(upstream)
            close(client)
            close(upstream)
        }
    }
    spawn { up.readLoop() }
    spawn { down.readLoop() }
    spawn { up.writeLoop(); done() }
    spawn { down.writeLoop(); done() }
}

signal(SIGPIPE, SIG_IGN)
// Cut/heal signals are taken by one thread with sigwait (a handler may not take the link's mutex);
// they are blocked everywhere else, and every thread inherits the mask from here.
var controlSignals = sigset_t()
sigemptyset(&controlSignals)
sigaddset(&controlSignals, SIGUSR1)
sigaddset(&controlSignals, SIGUSR2)
pthread_sigmask(SIG_BLOCK, &controlSignals, nil)
spawn {
    var signals = controlSignals
    while true {
        var received: Int32 = 0
        guard sigwait(&signals, &received) == 0 else { continue }
        link.cut(received == SIGUSR1)
        fputs("twinfs-proxy: link \(received == SIGUSR1 ? "cut" : "healed")\n", stderr)
    }
}

let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
var reuse: Int32 = 1
setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &reuse, socklen_t(MemoryLayout<Int32>.size))
var listenAddress = address(options.listenHost, options.listenPort)
let bound = withUnsafePointer(to: &listenAddress) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
}
guard bound == 0, listen(listener, 64) == 0 else {
    fputs("twinfs-proxy: cannot listen on \(options.listenHost):\(options.listenPort): \(String(cString: strerror(errno)))\n", stderr)
    exit(1)
}
var actual = sockaddr_in()
var length = socklen_t(MemoryLayout<sockaddr_in>.size)
_ = withUnsafeMutablePointer(to: &actual) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) } }
print("twinfs-proxy: ready \(UInt16(bigEndian: actual.sin_port))")
fflush(stdout)

while true {
    let client = accept(listener, nil, nil)
    if client < 0 {
        if errno == EINTR { continue }
        fputs("twinfs-proxy: accept failed: \(String(cString: strerror(errno)))\n", stderr)
        exit(1)
    }
    serve(client: client)
}
