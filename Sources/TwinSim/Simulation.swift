// TwinSim/Simulation.swift: two nodes running the real MirrorCore over a simulated world, driven by one seed.
// Owns: the event loop, client operations and their kernel caches, the execution of the core's actions against the
// simulated store and network, fault injection (drops, partitions, crashes, restarts), the healing phase, the
// per-step invariant checks and the final checks.
// Must never: consult anything but its seeded PRNG streams and its own logical clock (and never iterate a hashed
// collection where the order could reach the run), or make a protocol decision: those are the core's.

import MirrorCore

public struct SimOptions: Sendable {
    public var faults = true
    /// Model the kernel's page/attr cache: reads of cached locations never reach the daemon until it invalidates them.
    public var kernelCache = true
    public var trace = false
    /// Print trace lines as they happen (so a crash of the core still shows what led to it) instead of keeping them.
    public var streamTrace = false
    public var checkInvariantsEachStep = true
    /// After the last operation is issued, how long (simulated) the pair gets to heal, finish and drain.
    public var healBudgetUs: SimTimeUs = 30_000_000
    /// Hard cap on processed events: a livelock burns events without finishing.
    public var eventBudget = 400_000
    /// Interval of the shell's periodic tick (the core may ask for earlier ones with `wakeAt`).
    public var tickPeriodUs: SimTimeUs = 10_000
    /// Overrides of the seed-derived core configuration (tests use these to switch off one rule).
    public var rules: ProtocolRules = .safe
    public var adjustCore: (@Sendable (inout CoreSetup) -> Void)?
    /// Fixed disk latency per node (scenarios use it to make one node's disk slow).
    public var diskLatencyUs: [SimTimeUs?] = [nil, nil]
    /// Fixed delay between a grant and the operation applying its writes.
    public var applyDelayUs: SimTimeUs?
    /// Focus every seed on durability races: node A's disk 30x slower, frequent crashes, all of them power losses,
    /// no network faults. Used to hunt bugs that need a power loss inside a slow persist.
    public var harshDisks = false
    /// Give both nodes the seed's ordinary disk (no 30x slower node): the workload report uses it so that latency
    /// figures compare policies, not disks.
    public var uniformDisks = false
    /// Overrides the seed's writeback delay (how old an unsynced write must be to survive a power loss).
    public var writebackUs: SimTimeUs?
    /// Joining (PROTOCOL.md "Joining"): node A's store is populated before the run (every register written by one
    /// completed operation), node B's is fresh and joins: it reads every location through a filler (the shell's
    /// walk) while its clients work, restarting the walk after a crash, and then steps `joinCompleted`.
    public var joining = false
    /// Leaving (PROTOCOL.md "Leaving"): node A steps `leaveRequested` when healing begins (or when it restarts
    /// during healing); the final checks then want A without MOS and, if A never crashed, B without MOOS.
    public var leave = false
    /// Promotion (PROTOCOL.md section 13): once a quarter of the operations are issued the link is cut for good; a
    /// little later node A is promoted (it serves alone) while B's clients keep writing what B holds; once two thirds
    /// are issued (or when healing begins) B is demoted: its mirror state is wiped and it restarts joining and
    /// adopting, then walks everything. B's writes that A lacked are expected losses (the conflicts the shell
    /// preserves); every other check applies, and no final value may be one of those lost writes.
    public var promote = false
    public init() {}
}

public struct SimResult: Sendable {
    public let config: SwarmConfig
    public let core: CoreSetup
    public let violations: [Violation]
    public let metrics: SimMetrics
    public let trace: [String]
    public let finalTimeUs: SimTimeUs
    public var passed: Bool { violations.isEmpty }
}

public final class Simulation {
    public enum IO: Sendable {
        case read(UInt64, Payload, Version)
        case write(UInt64, stored: Version)
        case persist(UInt64)
    }

    public enum Event: Sendable {
        case deliver(to: Int, epoch: UInt64, Message)
        case ioDone(node: Int, incarnation: UInt64, IO)
        case tick(node: Int, incarnation: UInt64, periodic: Bool)
        case applyOperation(node: Int, incarnation: UInt64, opID: Int)
        case clientNext(node: Int, client: Int)
        case faultTick
        case restart(node: Int)
        case reconnect
        /// The joining node's walk reads its next location.
        case fillNext(node: Int, incarnation: UInt64)
        /// Promotion runs: promote A, demote B (retried while the node concerned is down).
        case promote
        case demote
    }

    struct Node {
        var core: MirrorNode?
        var store: SimStore
        var incarnation: UInt64 = 0
        var cache: [Int: LocationData] = [:]
        var lastIoCompletionUs: SimTimeUs = 0
        var requestsSent = 0
        var clientOps: [Int?]
        var nextPrivateToken: UInt64 = 1 << 62
        var nextCreate = 0
        var isUp: Bool { core != nil }
    }

    struct LiveOp {
        let node: Int
        let client: Int?
        let op: SimOp
        let stamp: WriteStamp
        let requestsAtStart: Int
        var granted: [Location: Version]? = nil
    }

    public enum Phase: Sendable { case faulty, healing, finished }

    public let config: SwarmConfig
    public let coreSetup: CoreSetup
    public private(set) var layout: SimLayout
    public private(set) var map: LocationMap
    public let options: SimOptions
    public private(set) var queue = EventQueue<Event>()
    public private(set) var network: SimNetwork
    public private(set) var history = History()
    public private(set) var metrics = SimMetrics()
    public private(set) var violations: [Violation] = []
    public private(set) var trace: [String] = []
    public private(set) var phase = Phase.faulty
    var nodes: [Node] = []
    var live: [Int: LiveOp] = [:]
    var workload: WorkloadGenerator
    var netRandom: SimRandom, diskRandom: SimRandom, faultRandom: SimRandom, clientRandom: SimRandom
    var fsyncRandom: SimRandom
    var inFlightMessages = 0
    var held: [Bool] = [false, false]
    var heldMessages: [[(epoch: UInt64, message: Message)]] = [[], []]
    var opsIssued = 0
    var healStartUs: SimTimeUs = 0
    var reconnectScheduled = false
    var restartScheduled: [Bool] = [false, false]
    var invariantReported = false
    var pendingWakes: [Set<SimTimeUs>] = [[], []]
    /// Joining runs: the filler's next location and its read in flight, per node.
    var fillCursor = [0, 0]
    var fillOp: [Int?] = [nil, nil]
    var crashedEver = [false, false]
    /// Store completions scheduled and not yet delivered (a skipped `onlyIfNewer` write has no store I/O but its
    /// completion still changes the core's state, so the run is not settled before it).
    var ioPending = 0
    /// Operations with a completed effect a power loss legitimately undid somewhere (written, never synced).
    public private(set) var rolledBackOps: [Int] = []
    /// Promotion runs: where the scenario stands. While `split` (cut until B is demoted) the pair never reconnects and
    /// the cross-node invariants do not apply (both sides hold tokens the other does not know about).
    public enum PromotionStage: Sendable { case before, split, promoted, demoted }
    public private(set) var promotionStage = PromotionStage.before
    var split: Bool { promotionStage == .split || promotionStage == .promoted }
    var promotedAtUs: SimTimeUs = 0
    /// Per register, the stamps of completed writes the promotion gave up (must not be any final value).
    var givenUp: [RegisterKey: Set<WriteStamp>] = [:]

    public init(config: SwarmConfig, options: SimOptions = SimOptions()) {
        var config = config
        if options.uniformDisks { config.diskSlowdown = [1, 1] }
        self.config = config
        self.options = options
        var setup = CoreSetup.derive(config, rules: options.rules)
        options.adjustCore?(&setup)
        coreSetup = setup
        layout = SimLayout(config: config)
        map = LocationMap(layout)
        network = SimNetwork(latencyMinUs: config.latencyMinUs, latencyJitterUs: config.latencyJitterUs)
        var root = SimRandom(seed: config.seed)
        netRandom = root.fork(); diskRandom = root.fork(); faultRandom = root.fork(); clientRandom = root.fork()
        var workRandom = root.fork()
        fsyncRandom = root.fork()
        let writebackUs = options.writebackUs ?? workRandom.pick([1_000, 50_000, 1_000_000] as [SimTimeUs])
        workload = WorkloadGenerator(layout: layout, kind: config.workload, random: &workRandom)
        for _ in 0..<2 {
            nodes.append(Node(core: nil, store: SimStore(layout: layout, writebackUs: writebackUs),
                              clientOps: Array(repeating: nil, count: config.clientsPerNode)))
        }
    }

    public var nowUs: SimTimeUs { queue.nowUs }

    @inline(__always)
    func log(_ text: @autoclosure () -> String) {
        if options.streamTrace { print("\(queue.nowUs)us \(text())") } else if options.trace { trace.append("\(queue.nowUs)us \(text())") }
    }

    // MARK: - Whole runs

    /// Runs a swarm seed: faults and clients until the operation budget is spent, then healing and final checks.
    public static func run(seed: UInt64, workload: WorkloadKind? = nil, options: SimOptions = SimOptions()) -> SimResult {
        var config = SwarmConfig.derive(seed: seed, workload: workload, faults: options.faults)
        if options.harshDisks {
            config.diskSlowdown = [30, 1]; config.powerLossFraction = 1; config.crashChance = 0.15
            config.disconnectChance = 0
        }
        return Simulation(config: config, options: options).runSwarm()
    }

    public func runSwarm() -> SimResult {
        log("config \(config)")
        log("core \(coreSetup.description)")
        if options.joining { prepareJoin() }
        for node in 0..<2 { boot(node) }
        if options.joining { queue.schedule(afterUs: 1, .fillNext(node: 1, incarnation: 0)) }
        connect()
        for node in 0..<2 {
            for client in 0..<config.clientsPerNode {
                queue.schedule(afterUs: clientRandom.uint64(0...1_000), .clientNext(node: node, client: client))
            }
        }
        if options.faults { queue.schedule(afterUs: config.faultTickUs, .faultTick) }
        if config.operationCount == 0 { startHealing() }
        var steps = 0
        while phase != .finished {
            guard let entry = queue.pop() else {
                fail(.noProgress, "nothing left to happen but the run is not done: \(stuckSummary())")
                break
            }
            steps += 1
            if steps > options.eventBudget {
                fail(.noProgress, "event budget \(options.eventBudget) exhausted (livelock?): \(stuckSummary())")
                break
            }
            handle(entry.payload)
            if phase == .healing {
                if isQuiescent { break }
                if queue.nowUs - healStartUs > options.healBudgetUs {
                    fail(.noProgress, "not quiescent \(options.healBudgetUs)us after healing began: \(stuckSummary())")
                    break
                }
            }
        }
        metrics.events = steps
        finish()
        return result
    }

    public var result: SimResult {
        SimResult(config: config, core: coreSetup, violations: violations, metrics: metrics, trace: trace,
                  finalTimeUs: queue.nowUs)
    }

    // MARK: - Driving (used by swarm runs and by scripted scenarios)

    public func boot(_ node: Int) {
        precondition(nodes[node].core == nil)
        let image = nodes[node].store.persisted
        nodes[node].core = MirrorNode(config: coreSetup.mirrorConfig(node: node), prediction: coreSetup.prediction(),
                                      recovered: RecoveredState(entries: [], clockReservation: image.clockReservation,
                                                                incarnation: 0, joining: image.joining,
                                                                sole: image.sole, adopting: image.adopting))
        log("\(nodeName(node)) boots")
        scheduleTick(node, afterUs: options.tickPeriodUs, periodic: true)
    }

    /// Issues one client operation on `node`; returns its operation id.
    @discardableResult
    public func issue(_ op: SimOp, on node: Int, client: Int? = nil) -> Int {
        precondition(nodes[node].isUp, "issue on a crashed node")
        var writes: [RegisterKey: WriteStamp] = [:]
        let stamp = WriteStamp(history.ops.count + 1)
        for w in op.writes { for s in w.slots { writes[RegisterKey(location: w.location, slot: s)] = stamp } }
        let readKeys = op.reads.flatMap { layout.registers($0) }
        let id = history.invoke(node: node, label: op.label, atUs: queue.nowUs, writes: writes, readKeys: readKeys)
        assert(WriteStamp(id + 1) == stamp, "stamps follow operation ids")
        metrics.operations += 1
        if op.category == .fsync { metrics.fsyncs += 1 } else if op.writes.isEmpty { metrics.reads += 1 } else { metrics.writes += 1 }
        metrics.writtenTracks += op.writtenTracks(layout)
        metrics.writtenLocations += op.writes.count
        if let client { nodes[node].clientOps[client] = id }
        if node == 1 && promotionStage == .promoted { history.uncheckReads(id) }
        log("\(nodeName(node)) op#\(id) \(op.label) stamp \(stamp)")
        // The kernel answers a read of cached locations itself; the daemon never sees it.
        if op.category == .fsync {
            live[id] = LiveOp(node: node, client: client, op: op, stamp: stamp, requestsAtStart: nodes[node].requestsSent)
            // The shell syncs its own copy at once; the core makes the peer's copy durable.
            for loc in op.flush { nodes[node].store.sync(location: loc) }
            step(node, .flushRequested(FlushID(UInt64(id)), op.flush.map { map[$0] }))
            return id
        }
        if options.kernelCache && op.writes.isEmpty && op.reads.allSatisfy({ nodes[node].cache[$0] != nil }) {
            var reads: [RegisterKey: WriteStamp] = [:]
            for loc in op.reads {
                for (s, v) in nodes[node].cache[loc]!.slots.enumerated() { reads[RegisterKey(location: loc, slot: s)] = v }
            }
            history.complete(id, atUs: queue.nowUs, outcome: .ok, reads: reads)
            metrics.operationsCompleted += 1
            metrics.localOperations += 1
            metrics.cacheHits += 1
            log("\(nodeName(node)) op#\(id) served from the kernel cache")
            if let client { clientDone(node: node, client: client) }
            return id
        }
        live[id] = LiveOp(node: node, client: client, op: op, stamp: stamp, requestsAtStart: nodes[node].requestsSent)
        var items: [AccessItem] = op.reads.map { AccessItem(map[$0], .read) }
        for w in op.writes { items.append(AccessItem(map[w.location], w.full ? .writeFull : .writePartial)) }
        let spare = layout.spareInodes[node]
        var nextInodes: [UInt64] = []
        for k in 0..<min(spare.count, 8) {
            if case .inodeRecord(let ino) = layout.kinds[spare[(nodes[node].nextCreate + k) % spare.count]] { nextInodes.append(ino) }
        }
        if op.category == .create { nodes[node].nextCreate += 1 }
        let hint = PredictionHint(fileTrackCount: UInt64(config.tracksPerFile), nextInodes: nextInodes)
        step(node, .operationRequested(OperationRequest(id: OperationID(UInt64(id)), items: items, hint: hint)))
        return id
    }

    public func crash(_ node: Int, kind: SimStore.CrashKind) {
        guard let core = nodes[node].core else { return }
        metrics.crashes += 1
        metrics.absorb(core.status.counters)
        log("\(nodeName(node)) CRASH (\(kind.rawValue))")
        if network.isConnected { disconnect(partitionUntilUs: nil, reason: "\(nodeName(node)) crashed") }
        let map = self.map
        _ = nodes[node].store.crash(kind, nowUs: queue.nowUs, random: &diskRandom, ids: { map.id($0) })
        if kind == .powerLoss {
            // Completed writes whose value now exists on neither node were never synced anywhere: the contract lets a
            // power loss lose them (it would not let a kill lose them, and a kill never does here).
            for op in history.ops where op.outcome == .ok {
                for (key, stamp) in op.writes.sorted(by: { $0.key < $1.key })
                    where op.rolledBack[key] == nil && !op.synced.contains(key) {
                    if (0..<2).allSatisfy({ !holdsValue($0, key, stamp) }) {
                        history.forgive(op.id, key, atUs: queue.nowUs)
                        log("power loss: op#\(op.id)'s value of \(key) now exists on neither node (never synced)")
                    }
                }
            }
            rolledBackOps = history.ops.filter { !$0.rolledBack.isEmpty }.map(\.id)
        }
        nodes[node].core = nil
        nodes[node].incarnation += 1
        fillOp[node] = nil
        crashedEver[node] = true
        nodes[node].cache = [:]
        pendingWakes[node] = []
        heldMessages[node] = []
        for id in live.keys.sorted() where live[id]!.node == node {
            history.complete(id, atUs: queue.nowUs, outcome: .lostInCrash)
            live[id] = nil
        }
        for c in nodes[node].clientOps.indices { nodes[node].clientOps[c] = nil }
    }

    public func restart(_ node: Int) {
        guard !nodes[node].isUp else { return }
        let image = nodes[node].store.persisted
        let entries = image.states.sorted { $0.key < $1.key }.map { PersistEntry($0.key, $0.value) }
        let recovered = RecoveredState(entries: entries, clockReservation: image.clockReservation,
                                       incarnation: nodes[node].incarnation, joining: image.joining,
                                       sole: image.sole, adopting: image.adopting)
        nodes[node].core = MirrorNode(config: coreSetup.mirrorConfig(node: node), prediction: coreSetup.prediction(),
                                      recovered: recovered)
        log("\(nodeName(node)) restarts (incarnation \(nodes[node].incarnation)) with \(entries.count) persisted entries, clock reservation \(image.clockReservation)\(image.sole ? ", sole" : "")\(image.adopting ? ", adopting" : "")")
        scheduleTick(node, afterUs: options.tickPeriodUs, periodic: true)
        scheduleReconnect(afterUs: 1_000)
        if image.joining {
            // The shell walks the tree again from the start until it has recorded the completion.
            fillCursor[node] = 0
            queue.schedule(afterUs: 1, .fillNext(node: node, incarnation: nodes[node].incarnation))
        }
        if options.leave && node == 0 && phase != .faulty { step(0, .leaveRequested) }
        if phase == .faulty {
            for c in 0..<config.clientsPerNode where nodes[node].clientOps[c] == nil {
                queue.schedule(afterUs: clientRandom.uint64(0...1_000), .clientNext(node: node, client: c))
            }
        }
    }

    public func connect() {
        guard !split, !network.isConnected, nodes.allSatisfy(\.isUp), network.canReconnect(nowUs: queue.nowUs) else { return }
        let epoch = network.connect(nowUs: queue.nowUs)
        log("connection up, epoch \(epoch)")
        for node in 0..<2 { step(node, .connectionUp(epoch: epoch)) }
    }

    public func disconnect(partitionUntilUs: SimTimeUs?, reason: String) {
        guard let epoch = network.currentEpoch else { return }
        metrics.disconnects += 1
        network.disconnect(nowUs: queue.nowUs, partitionUntilUs: partitionUntilUs)
        log("connection down, epoch \(epoch) (\(reason))" + (partitionUntilUs.map { ", partitioned until \($0)us" } ?? ""))
        heldMessages = [[], []]
        for node in 0..<2 where nodes[node].isUp { step(node, .connectionDown) }
        if phase != .finished && (options.faults || phase == .healing) {
            let wait = partitionUntilUs.map { $0 > queue.nowUs ? $0 - queue.nowUs : 0 } ?? 0
            scheduleReconnect(afterUs: max(1_000, wait))
        }
    }

    /// Holds (or releases) messages sent by `node`; released messages keep their order and still die with their epoch.
    public func hold(from node: Int, _ on: Bool) {
        held[node] = on
        if !on {
            let pending = heldMessages[node]
            heldMessages[node] = []
            for (epoch, m) in pending where network.currentEpoch == epoch { transmit(from: node, m) }
        }
    }

    /// Processes events up to `limitUs` while `keepGoing` holds. Returns false if it stopped on the time limit.
    @discardableResult
    public func run(untilUs limitUs: SimTimeUs, while keepGoing: () -> Bool = { true }) -> Bool {
        while keepGoing() {
            guard let t = queue.peekTimeUs, t <= limitUs, let entry = queue.pop() else { return !keepGoing() }
            handle(entry.payload)
        }
        return true
    }

    /// No messages, disk I/O or operations in flight.
    public var isSettled: Bool {
        inFlightMessages == 0 && live.isEmpty && ioPending == 0 && nodes.allSatisfy { !$0.store.hasIOInFlight }
    }

    public func view(_ node: Int) -> NodeView? { nodes[node].core.map { map.view(of: $0) } }
    public func storeContent(_ node: Int, _ location: Int) -> LocationData { nodes[node].store.visible[location] }
    public func isCached(_ node: Int, _ location: Int) -> Bool { nodes[node].cache[location] != nil }
    public func isUp(_ node: Int) -> Bool { nodes[node].isUp }
    public func core(_ node: Int) -> MirrorNode? { nodes[node].core }
    public var heldCount: Int { heldMessages[0].count + heldMessages[1].count }
    public var isConnected: Bool { network.isConnected }

    // MARK: - Events

    func handle(_ event: Event) {
        switch event {
        case .deliver(let to, let epoch, let message):
            inFlightMessages -= 1
            guard network.deliverable(epoch: epoch), nodes[to].isUp else {
                log("lost in flight to \(nodeName(to)): \(MessageDescriber.describe(message))")
                return
            }
            log("\(nodeName(to)) <- \(MessageDescriber.describe(message))")
            step(to, .received(message))
        case .ioDone(let node, let incarnation, let io):
            ioPending -= 1
            guard nodes[node].incarnation == incarnation, nodes[node].isUp else { return }
            switch io {
            case .read(let token, let payload, let version):
                log("\(nodeName(node)) store read #\(token) done: \(MessageDescriber.payload(payload)) \(version)")
                step(node, .storeReadDone(CompletionToken(token), payload, version))
            case .write(let token, let stored):
                log("\(nodeName(node)) store write #\(token) done, holds \(stored)")
                nodes[node].store.completeWrite(token: token)
                step(node, .storeWriteDone(CompletionToken(token), stored: stored))
            case .persist(let token):
                log("\(nodeName(node)) persist #\(token) durable")
                let map = self.map
                nodes[node].store.completePersist(upTo: token, ids: { map.id($0) })
                step(node, .persistDone(CompletionToken(token)))
            }
        case .tick(let node, let incarnation, let periodic):
            guard nodes[node].incarnation == incarnation, nodes[node].isUp else { return }
            if periodic {
                scheduleTick(node, afterUs: options.tickPeriodUs, periodic: true)
            } else {
                pendingWakes[node].remove(queue.nowUs)
            }
            step(node, .tick(queue.nowUs))
        case .applyOperation(let node, let incarnation, let opID):
            guard nodes[node].incarnation == incarnation, nodes[node].isUp else { return }
            applyGranted(node, opID)
        case .clientNext(let node, let client):
            guard phase == .faulty, nodes[node].isUp, nodes[node].clientOps[client] == nil,
                  opsIssued < config.operationCount else { return }
            opsIssued += 1
            let op = config.fsyncChance > 0 && fsyncRandom.chance(config.fsyncChance)
                ? workload.fsync(node: node, &fsyncRandom) : workload.next(node: node, &clientRandom)
            issue(op, on: node, client: client)
            if options.promote && promotionStage == .before && opsIssued >= max(1, config.operationCount / 4) {
                cutForPromotion()
            }
            if options.promote && promotionStage == .promoted && opsIssued >= config.operationCount * 2 / 3 {
                queue.schedule(afterUs: 1, .demote)
            }
            if opsIssued == config.operationCount { startHealing() }
        case .faultTick:
            guard phase == .faulty else { return }
            injectFaults()
            queue.schedule(afterUs: config.faultTickUs, .faultTick)
        case .restart(let node):
            restartScheduled[node] = false
            restart(node)
        case .fillNext(let node, let incarnation):
            guard nodes[node].incarnation == incarnation else { return }
            fillNext(node)
        case .promote:
            promoteA()
        case .demote:
            demoteB()
        case .reconnect:
            reconnectScheduled = false
            if network.isConnected || !nodes.allSatisfy(\.isUp) { return }
            if !network.canReconnect(nowUs: queue.nowUs) {
                if phase == .healing { network.healPartition(nowUs: queue.nowUs) }
                scheduleReconnect(afterUs: 5_000)
                return
            }
            connect()
        }
        if options.checkInvariantsEachStep { checkInvariants() }
    }

    func step(_ node: Int, _ event: MirrorCore.Event) {
        guard let core = nodes[node].core else { return }
        let actions = core.step(event)
        perform(node, actions)
    }

    func perform(_ node: Int, _ actions: [Action]) {
        for action in actions {
            guard nodes[node].isUp else { return }
            switch action {
            case .send(let m):
                let info = MessageDescriber.info(m)
                metrics.messagesByKind[info.kind, default: 0] += 1
                if info.isMarkRequest {
                    metrics.markRequests += 1; metrics.markedLocations += info.locationCount
                    nodes[node].requestsSent += 1
                }
                if info.isPullRequest { metrics.pullRequests += 1; nodes[node].requestsSent += 1 }
                if held[node], let epoch = network.currentEpoch {
                    heldMessages[node].append((epoch, m))
                    log("\(nodeName(node)) -> (held) \(MessageDescriber.describe(m))")
                } else {
                    transmit(from: node, m)
                }
            case .storeRead(let token, let location):
                let id = locationID(location)
                let data = nodes[node].store.visible[id]
                log("\(nodeName(node)) store read #\(token.raw) \(layout.name(id))")
                scheduleIo(node, .read(token.raw, data.payload, data.version))
            case .storeWrite(let token, let location, let payload, let version, let onlyIfNewer, let sync):
                let id = locationID(location)
                let current = nodes[node].store.visible[id]
                // Checked before decoding: an adopting peer's answer for a copy it does not trust is empty data of
                // version zero, which `onlyIfNewer` always skips (PROTOCOL.md section 13).
                if onlyIfNewer && current.version >= version {
                    log("\(nodeName(node)) skips store write \(layout.name(id)) \(version): holds \(current.version)")
                    scheduleIo(node, .write(token.raw, stored: current.version))
                    continue
                }
                guard let data = LocationData(payload: payload, version: version, slots: layout.slotCounts[id]) else {
                    fail(.invariant, "\(nodeName(node)) wrote malformed data to \(location)")
                    continue
                }
                do {
                    log("\(nodeName(node)) store write #\(token.raw) \(layout.name(id)) := \(data)\(sync ? " sync" : "")")
                    nodes[node].store.issueWrite(token: token.raw, location: id, data, sync: sync, nowUs: queue.nowUs)
                    scheduleIo(node, .write(token.raw, stored: version))
                }
            case .persist(let token, let batch):
                for l in batch.hardenFirst { nodes[node].store.harden(location: locationID(l)) }
                nodes[node].store.issuePersist(token: token.raw, batch)
                log("\(nodeName(node)) persists #\(token.raw) \(batch.entries.map { "\($0.location)=\($0.state)" })\(batch.clockReservation.map { " clock<=\($0)" } ?? "")")
                scheduleIo(node, .persist(token.raw))
            case .invalidateCaches(let location):
                do {
                    let id = locationID(location)
                    nodes[node].cache[id] = nil
                    log("\(nodeName(node)) invalidates cache of \(layout.name(id))")
                }
            case .grant(let opID, let stamps):
                let id = Int(opID.raw)
                guard var op = live[id], op.node == node, op.granted == nil else {
                    fail(.invariant, "\(nodeName(node)) granted op#\(id), which is not waiting there")
                    continue
                }
                var versions: [Location: Version] = [:]
                for s in stamps { versions[s.location] = s.version }
                op.granted = versions
                live[id] = op
                log("\(nodeName(node)) grants op#\(id) \(stamps.map { "\($0.location)@\($0.version)" })")
                // The operation runs a little later, holding its locations: pulls and marks may arrive meanwhile.
                let delay = options.applyDelayUs ?? diskDelay(node)
                queue.schedule(afterUs: delay, .applyOperation(node: node, incarnation: nodes[node].incarnation, opID: id))
            case .fail(let opID, let error):
                finishOp(node, Int(opID.raw), error: "\(error)")
            case .flushDone(let fid):
                let id = Int(fid.raw)
                if let op = live[id], op.op.category == .fsync { markSynced(by: id, op.op.flush) }
                finishOp(node, id, error: nil)
            case .flushFailed(let fid, let error):
                finishOp(node, Int(fid.raw), error: "\(error)")
            case .wakeAt(let tick):
                let at = max(tick, queue.nowUs)
                if !pendingWakes[node].contains(at) {
                    pendingWakes[node].insert(at)
                    queue.schedule(atUs: at, .tick(node: node, incarnation: nodes[node].incarnation, periodic: false))
                }
            }
        }
    }

    /// The id of a location the core names; locations outside the layout (a predicted track past the end of a file,
    /// say) are added on first use with initial contents on both nodes, as a real store would read zeros there.
    func locationID(_ location: Location) -> Int {
        if let id = map.id(location) { return id }
        let kind: SimLayout.Kind = location.trackIndex.map { .track(inode: location.ino, index: $0) }
            ?? .inodeRecord(inode: location.ino)
        let slots = location.isInodeRecord ? 1 : layout.slotsPerTrack
        let id = layout.add(kind, slots: slots)
        map.register(location, id: id)
        for n in 0..<2 { nodes[n].store.addLocation(slots: slots) }
        log("location \(layout.name(id)) (outside the layout) comes into use")
        return id
    }

    /// Writes this node made to `locations` that completed before fsync `id` began are now promised durable on both
    /// nodes (PROTOCOL: a flush covers the versions written by the flushing node; the peer's own writes are its own).
    func markSynced(by id: Int, _ locations: [Int]) {
        let flush = history.op(id)
        let covered = Set(locations)
        for op in history.ops where op.node == flush.node && op.outcome == .ok && (op.completeUs ?? .max) <= flush.invokeUs {
            for key in op.writes.keys.sorted() where covered.contains(key.location) { history.markSynced(op.id, key) }
        }
    }

    /// Joining runs: A's store holds one completed write of every register (op#0, durable), B's store is fresh.
    func prepareJoin() {
        var writes: [RegisterKey: WriteStamp] = [:]
        let stamp = WriteStamp(history.ops.count + 1)
        var populate: [(Int, LocationData)] = []
        for loc in 0..<layout.locationCount {
            for k in layout.registers(loc) { writes[k] = stamp }
            populate.append((loc, LocationData(version: Version(counter: 1, node: NodeID(1)),
                                               slots: Array(repeating: stamp, count: layout.slotCounts[loc]))))
        }
        let id = history.invoke(node: 0, label: "populate", atUs: 0, writes: writes, readKeys: [])
        history.complete(id, atUs: 0, outcome: .ok)
        for k in writes.keys.sorted() { history.markSynced(id, k) }
        nodes[0].store.prepare(populate: populate, clockReservation: 1 << 16, joining: false)
        nodes[1].store.prepare(populate: [], clockReservation: 0, joining: true)
        log("A's store is populated (op#\(id), stamp \(stamp)); B joins")
    }

    /// The joining node's walk: reads every location in order (each read pulls what the store lacks), retrying a
    /// failed read, then steps `joinCompleted`.
    func fillNext(_ node: Int) {
        guard let core = nodes[node].core, core.status.joining, fillOp[node] == nil else { return }
        guard fillCursor[node] < layout.locationCount else {
            log("\(nodeName(node)) completes its join")
            step(node, .joinCompleted)
            return
        }
        let loc = fillCursor[node]
        let id = issue(SimOp(category: .read, reads: [loc], writes: [], label: "fill \(layout.name(loc))"), on: node)
        if history.op(id).outcome == .ok {
            fillCursor[node] += 1  // served from the kernel cache: the daemon already read it
            queue.schedule(afterUs: 1, .fillNext(node: node, incarnation: nodes[node].incarnation))
        } else {
            fillOp[node] = id
        }
    }

    func applyGranted(_ node: Int, _ id: Int) {
        guard let op = live[id], let versions = op.granted else { return }
        var missing: [String] = []
        for w in op.op.writes {
            guard let version = versions[map[w.location]] else { missing.append(layout.name(w.location)); continue }
            var data = nodes[node].store.visible[w.location]
            data.version = version
            for s in w.slots { data.slots[s] = op.stamp }
            let token = nodes[node].nextPrivateToken
            nodes[node].nextPrivateToken += 1
            log("\(nodeName(node)) op#\(id) writes \(layout.name(w.location)) := \(data)")
            nodes[node].store.issueWrite(token: token, location: w.location, data, sync: false, nowUs: queue.nowUs, clientOp: id)
        }
        if !missing.isEmpty { fail(.invariant, "\(nodeName(node)) granted op#\(id) without a version for \(missing)") }
        var reads: [RegisterKey: WriteStamp] = [:]
        for loc in op.op.reads {
            for (s, v) in nodes[node].store.visible[loc].slots.enumerated() { reads[RegisterKey(location: loc, slot: s)] = v }
        }
        // The shell replies to the kernel (which may cache what was read or written) and then tells the core,
        // whose answer may invalidate those very caches for a mark that waited on this operation.
        finishOp(node, id, error: nil, reads: reads)
        step(node, .operationFinished(OperationID(UInt64(id)), unwritten: []))
    }

    func transmit(from node: Int, _ m: Message) {
        guard let epoch = network.currentEpoch,
              let at = network.send(from: node, nowUs: queue.nowUs, random: &netRandom) else {
            log("\(nodeName(node)) -> (no connection) \(MessageDescriber.describe(m))")
            return
        }
        inFlightMessages += 1
        log("\(nodeName(node)) -> \(MessageDescriber.describe(m))")
        queue.schedule(atUs: at, .deliver(to: 1 - node, epoch: epoch, m))
    }

    func scheduleIo(_ node: Int, _ io: IO) {
        // Completions come back in issue order, like a journal.
        let at = max(queue.nowUs + diskDelay(node), nodes[node].lastIoCompletionUs)
        nodes[node].lastIoCompletionUs = at
        ioPending += 1
        queue.schedule(atUs: at, .ioDone(node: node, incarnation: nodes[node].incarnation, io))
    }

    func diskDelay(_ node: Int) -> SimTimeUs {
        if let fixed = options.diskLatencyUs[node] { return fixed }
        let base = diskRandom.uint64(config.diskLatencyMinUs...max(config.diskLatencyMinUs, config.diskLatencyMaxUs))
        return base * config.diskSlowdown[node]
    }

    func scheduleTick(_ node: Int, afterUs: SimTimeUs, periodic: Bool) {
        queue.schedule(afterUs: afterUs, .tick(node: node, incarnation: nodes[node].incarnation, periodic: periodic))
    }

    func finishOp(_ node: Int, _ id: Int, error: String?, reads: [RegisterKey: WriteStamp] = [:]) {
        guard let op = live[id], op.node == node else {
            fail(.invariant, "\(nodeName(node)) finished op#\(id), which is not in flight there")
            return
        }
        live[id] = nil
        if let error {
            history.complete(id, atUs: queue.nowUs, outcome: .failed(error))
            metrics.operationsFailed += 1
            if op.op.writes.isEmpty && op.op.category != .fsync { metrics.readsFailed += 1 }
            log("\(nodeName(node)) op#\(id) FAILED: \(error)")
        } else {
            if options.kernelCache {
                for loc in op.op.reads { nodes[node].cache[loc] = nodes[node].store.visible[loc] }
                for w in op.op.writes { nodes[node].cache[w.location] = nodes[node].store.visible[w.location] }
            }
            history.complete(id, atUs: queue.nowUs, outcome: .ok, reads: reads)
            metrics.operationsCompleted += 1
            let latency = Double(queue.nowUs - history.op(id).invokeUs)
            metrics.roundTripsTotal += latency / network.meanRoundTripUs
            if op.op.writes.isEmpty && op.op.category != .fsync {
                metrics.readRoundTripsMax = max(metrics.readRoundTripsMax, latency / network.meanRoundTripUs)
            }
            if nodes[node].requestsSent == op.requestsAtStart { metrics.localOperations += 1 }
            log("\(nodeName(node)) op#\(id) done" + (reads.isEmpty ? "" : " read \(reads.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" })"))
        }
        if let client = op.client { clientDone(node: node, client: client) }
        if fillOp[node] == id {
            fillOp[node] = nil
            if error == nil { fillCursor[node] += 1 }
            queue.schedule(afterUs: error == nil ? 1 : 10_000, .fillNext(node: node, incarnation: nodes[node].incarnation))
        }
    }

    func clientDone(node: Int, client: Int) {
        nodes[node].clientOps[client] = nil
        queue.schedule(afterUs: clientRandom.uint64(0...config.thinkTimeMaxUs), .clientNext(node: node, client: client))
    }

    func injectFaults() {
        if network.isConnected && faultRandom.chance(config.disconnectChance) {
            let until = faultRandom.chance(config.partitionChance) ? queue.nowUs + config.partitionUs : nil
            disconnect(partitionUntilUs: until, reason: "fault")
        }
        if faultRandom.chance(config.crashChance) {
            let node = faultRandom.int(0...1)
            if nodes[node].isUp {
                crash(node, kind: faultRandom.chance(config.powerLossFraction) ? .powerLoss : .processKill)
                if !restartScheduled[node] {
                    restartScheduled[node] = true
                    queue.schedule(afterUs: config.restartDelayUs + 1, .restart(node: node))
                }
            }
        }
    }

    func scheduleReconnect(afterUs: SimTimeUs) {
        guard !reconnectScheduled else { return }
        reconnectScheduled = true
        queue.schedule(afterUs: afterUs, .reconnect)
    }

    public func startHealing() {
        guard phase == .faulty else { return }
        phase = .healing
        healStartUs = queue.nowUs
        log("healing: no more faults or new operations")
        if options.leave && nodes[0].isUp { step(0, .leaveRequested) }
        if options.promote {
            if promotionStage == .before { cutForPromotion() }
            if promotionStage == .split { promoteA() }
            if promotionStage == .promoted { demoteB() }
        }
        network.healPartition(nowUs: queue.nowUs)
        for node in 0..<2 where !nodes[node].isUp && !restartScheduled[node] {
            restartScheduled[node] = true
            queue.schedule(afterUs: 1, .restart(node: node))
        }
        scheduleReconnect(afterUs: 1)
    }

    // MARK: - Promotion runs (PROTOCOL.md section 13)

    /// The link is cut for good: the operator will decide that B is gone.
    func cutForPromotion() {
        guard promotionStage == .before else { return }
        promotionStage = .split
        log("promotion: the link is cut until B is demoted")
        disconnect(partitionUntilUs: nil, reason: "cut for the promotion")
        queue.schedule(afterUs: 2_000 + faultRandom.uint64(0...20_000), .promote)
    }

    /// `twinfs promote` on A: the shell reports what A gives up, then steps `promoted`.
    func promoteA() {
        guard promotionStage == .split else { return }
        guard let core = nodes[0].core, !network.isConnected else {
            queue.schedule(afterUs: 5_000, .promote)
            return
        }
        let losses = core.promotionLosses(limit: 8)
        log("A is promoted; it gives up the peer's copy of \(losses.locations)\(losses.truncated ? "..." : "")\(losses.joiningIncomplete ? " and everything it never compared" : "")")
        promotionStage = .promoted
        promotedAtUs = queue.nowUs
        metrics.promotions += 1
        step(0, .promoted)
        // Completed writes whose value only B holds (A never got it, or lost it in a power loss) are given up now.
        for op in history.ops where op.outcome == .ok {
            for (key, stamp) in op.writes.sorted(by: { $0.key < $1.key })
                where !nodes[0].store.mayHold(location: key.location, slot: key.slot, stamp)
                    && nodes[1].store.visible[key.location].slots[key.slot] == stamp {
                giveUp(op.id, key, stamp)
            }
        }
        if phase != .faulty { queue.schedule(afterUs: 1, .demote) }
    }

    /// The shell's demotion of B: stop it, wipe its mirror state (the data stay), restart it joining and adopting.
    func demoteB() {
        guard promotionStage == .promoted else { return }
        if nodes[1].isUp { crash(1, kind: .processKill) }
        nodes[1].store.demote()
        promotionStage = .demoted
        // Every write of B's that A lacks is lost to the promotion: the conflicts the shell preserves.
        for op in history.ops where op.node == 1 {
            for (key, stamp) in op.writes.sorted(by: { $0.key < $1.key })
                where !nodes[0].store.mayHold(location: key.location, slot: key.slot, stamp) {
                giveUp(op.id, key, stamp)
            }
        }
        log("B is demoted: mirror state wiped, it rejoins adopting A's copy")
        restart(1)
    }

    /// The node's store holds `stamp` at `key` and will use it: an adopting node's copy without persisted state is
    /// untrusted (replaced by the peer's, whatever it holds), so it does not count as a surviving copy.
    func holdsValue(_ node: Int, _ key: RegisterKey, _ stamp: WriteStamp) -> Bool {
        let store = nodes[node].store
        guard store.visible[key.location].slots[key.slot] == stamp else { return false }
        return !(store.persisted.adopting && store.persisted.states[map.locations[key.location]] == nil)
    }

    func giveUp(_ id: Int, _ key: RegisterKey, _ stamp: WriteStamp) {
        guard givenUp[key]?.contains(stamp) != true else { return }
        givenUp[key, default: []].insert(stamp)
        guard history.op(id).outcome == .ok else { return }
        history.forgive(id, key, atUs: promotedAtUs)
        metrics.conflicts += 1
        log("promotion: op#\(id)'s value of \(key) (stamp \(stamp)) is given up (a conflict copy)")
    }

    /// Healed and drained: connected, nothing in flight, no out-of-sync data on either node.
    public var isQuiescent: Bool {
        network.isConnected && heldCount == 0 && isSettled
            && nodes.allSatisfy { $0.core?.status.joining != true }
            && nodes.allSatisfy { n in n.core.map { map.view(of: $0).oos.isEmpty } ?? false }
    }

    // MARK: - Checks

    func fail(_ kind: Violation.Kind, _ detail: String) {
        let v = Violation(kind, atUs: queue.nowUs, detail)
        violations.append(v)
        log("VIOLATION \(v)")
    }

    func names(_ ids: Set<Int>) -> [String] { ids.sorted().map(layout.name) }

    func checkInvariants() {
        guard !invariantReported else { return }
        let views = nodes.map { $0.core.map { map.view(of: $0) } }
        for x in 0..<2 {
            guard let v = views[x] else { continue }
            let both = v.mos.intersection(v.moos)
            if !both.isEmpty {
                invariantReported = true
                fail(.invariant, "\(nodeName(x)) holds MOS and MOOS together for \(names(both))")
            }
            if split {
                // Promotion runs, until B is demoted: the two sides live apart on purpose; only self-checks apply.
                if let core = nodes[x].core, !core.checkInvariants().isEmpty {
                    invariantReported = true
                    fail(.invariant, "\(nodeName(x)) core self-check: \(core.checkInvariants().prefix(3).joined(separator: "; "))")
                }
                continue
            }
            // The peer's MOOS must be durable wherever this node holds MOS (PROTOCOL invariant; hazard 7).
            let peerStore = nodes[1 - x].store
            let unbacked = v.mos.filter { !peerStore.persisted.restoresMOOS(map[$0]) }
            if !unbacked.isEmpty {
                invariantReported = true
                fail(.invariant, "\(nodeName(x)) holds MOS for \(names(unbacked)) but \(nodeName(1 - x)) has no durable MOOS there")
            }
            // Hazard 7, the twin of the MOOS rule above: where this node's store holds its own write that the peer's
            // store lacks, a durable superset bit (held or contested) must say so, or a crash now could leave both
            // nodes answering "in sync" over different data. Usually it is this node's bit; after the peer's power
            // loss undid a newer write of the peer's own (which had made it skip ours), it is the peer's: it
            // restarts with OOS there and compares with us before serving.
            let store = nodes[x].store
            var unprotected: Set<Int> = []
            for loc in 0..<min(store.visible.count, peerStore.visible.count) {
                let mine = store.visible[loc].version
                guard mine.node.raw == UInt8(x + 1), mine > peerStore.visible[loc].version else { continue }
                let location = map.locations[loc]
                func superset(_ s: PersistedState?) -> Bool { s == .held || s == .contested }
                if superset(store.persisted.states[location]) { continue }
                // A joining peer that has not compared the location fetches ours before serving it, and so does its
                // restart (no entry: the joining default; or a superset bit).
                let peerEntry = peerStore.persisted.states[location]
                if peerStore.persisted.joining && (peerEntry == nil || superset(peerEntry))
                    && (nodes[1 - x].core?.comparesBeforeServing(location) ?? true) { continue }
                // An adopting node's own copy that it has not compared since it rejoined is a write the promotion gave
                // up: it is replaced by the peer's, never sent.
                if store.persisted.adopting && store.persisted.states[location] == nil
                    && (nodes[x].core?.comparesBeforeServing(location) ?? true) { continue }
                let peerKnows = views[1 - x].map { $0.oos.contains(loc) } ?? true
                if peerKnows && superset(peerStore.persisted.states[location]) { continue }
                unprotected.insert(loc)
            }
            if !unprotected.isEmpty {
                invariantReported = true
                fail(.invariant, "\(nodeName(x)) holds its own writes of \(names(unprotected)) that \(nodeName(1 - x)) lacks, with no durable superset bit")
            }
            if let core = nodes[x].core {
                let selfCheck = core.checkInvariants()
                if !selfCheck.isEmpty {
                    invariantReported = true
                    fail(.invariant, "\(nodeName(x)) core self-check: \(selfCheck.prefix(3).joined(separator: "; "))")
                }
            }
        }
        if !split, let a = views[0], let b = views[1] {
            let shared = a.mos.intersection(b.mos)
            if !shared.isEmpty {
                invariantReported = true
                fail(.invariant, "both nodes hold MOS for \(names(shared))")
            }
        }
    }

    func stuckSummary() -> String {
        let pending = live.keys.sorted().prefix(4).map { "op#\($0) \(live[$0]!.op.label) on \(nodeName(live[$0]!.node))" }
        let views = (0..<2).map { n in
            view(n).map { v in "\(nodeName(n)): oos=\(names(v.oos)) moos=\(names(v.moos)) mos=\(names(v.mos))" }
                ?? "\(nodeName(n)): down"
        }
        return "pending \(pending) (\(live.count) in all), connected=\(network.isConnected), messages in flight \(inFlightMessages), \(views.joined(separator: "; "))"
    }

    /// The final checks: convergence, drained bitmaps, and the history (including final contents as late reads).
    public func finish() {
        defer { phase = .finished }
        for node in 0..<2 { if let core = nodes[node].core { metrics.absorb(core.status.counters) } }
        guard nodes.allSatisfy(\.isUp) else {
            fail(.noProgress, "a node is still down at the end")
            return
        }
        var diverged: [String] = []
        for loc in 0..<layout.locationCount {
            let a = nodes[0].store.visible[loc], b = nodes[1].store.visible[loc]
            if a != b { diverged.append("\(layout.name(loc)): A=\(a) B=\(b)") }
        }
        if !diverged.isEmpty {
            fail(.divergence, "stores differ after healing at \(diverged.count) location(s): \(diverged.prefix(4).joined(separator: "; "))")
        }
        let va = view(0)!, vb = view(1)!
        if !va.oos.isEmpty || !vb.oos.isEmpty {
            fail(.undrained, "OOS not empty after healing: A=\(names(va.oos)) B=\(names(vb.oos))")
        }
        if options.leave {
            // A left: it holds no token, and unless a crash of A left MOOS behind on B that nobody clears (a restarted
            // node never trusts MOS it may have held), B holds no MOOS for it either and serves everything alone.
            if !va.mos.isEmpty { fail(.undrained, "A left but still holds MOS for \(names(va.mos))") }
            if !crashedEver[0] && !vb.moos.isEmpty { fail(.undrained, "A left but B still holds MOOS for \(names(vb.moos))") }
        }
        if !va.mos.isSubset(of: vb.moos) || !vb.mos.isSubset(of: va.moos) {
            fail(.undrained, "MOS not mirrored by the peer's MOOS: A.mos=\(names(va.mos)) B.moos=\(names(vb.moos)) B.mos=\(names(vb.mos)) A.moos=\(names(va.moos))")
        }
        var finals: [[RegisterKey: WriteStamp]] = [[:], [:]]
        for node in 0..<2 {
            for loc in 0..<layout.locationCount {
                for (s, v) in nodes[node].store.visible[loc].slots.enumerated() { finals[node][RegisterKey(location: loc, slot: s)] = v }
            }
        }
        if options.promote {
            if promotionStage != .demoted { fail(.noProgress, "the promotion scenario did not reach the demotion") }
            // The promoted node's data win: no register may end with a write the promotion gave up.
            var resurrected: [String] = []
            for node in 0..<2 {
                for (key, value) in finals[node].sorted(by: { $0.key < $1.key }) where givenUp[key]?.contains(value) == true {
                    resurrected.append("\(nodeName(node)) \(key)=\(value)")
                }
            }
            if !resurrected.isEmpty {
                fail(.lostWrite, "writes the promotion gave up came back over the promoted node's data: \(resurrected.prefix(4))")
            }
        }
        for v in HistoryChecker.check(history, finalValues: finals, finalTimeUs: queue.nowUs + 1) {
            violations.append(v)
            log("VIOLATION \(v)")
        }
    }
}
