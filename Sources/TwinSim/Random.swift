// TwinSim/Random.swift: the simulator's only source of randomness.
// Owns: a seeded PRNG (SplitMix64 seeding xoshiro256**) and the few distributions the simulator draws from.
// Must never: read the wall clock, the system RNG, or anything else that would make a seed replay differently.

/// SplitMix64: expands one 64-bit seed into well-mixed words (used to seed xoshiro and to derive sub-seeds).
public struct SplitMix64 {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// xoshiro256**: fast, small state, and identical on every platform, so a seed is a complete replay recipe.
public struct SimRandom: RandomNumberGenerator {
    private var s0: UInt64, s1: UInt64, s2: UInt64, s3: UInt64

    public init(seed: UInt64) {
        var mix = SplitMix64(seed: seed)
        s0 = mix.next(); s1 = mix.next(); s2 = mix.next(); s3 = mix.next()
        // xoshiro's only forbidden state is all zeros; SplitMix64 cannot produce four zero words in a row
        // in practice, but the invariant is cheap to keep explicit.
        if s0 | s1 | s2 | s3 == 0 { s0 = 1 }
    }

    public mutating func next() -> UInt64 {
        let result = rotl(s1 &* 5, 7) &* 9
        let t = s1 << 17
        s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3
        s2 ^= t
        s3 = rotl(s3, 45)
        return result
    }

    private func rotl(_ x: UInt64, _ k: UInt64) -> UInt64 { (x << k) | (x >> (64 - k)) }

    /// A child generator whose stream does not overlap this one's in practice; used so that adding draws in one
    /// subsystem (say the network) does not shift every other subsystem's choices for the same seed.
    public mutating func fork() -> SimRandom { SimRandom(seed: next()) }

    /// Uniform integer in the closed range, without modulo bias (Lemire's method via the stdlib).
    public mutating func int(_ range: ClosedRange<Int>) -> Int { Int.random(in: range, using: &self) }

    public mutating func uint64(_ range: ClosedRange<UInt64>) -> UInt64 { UInt64.random(in: range, using: &self) }

    /// True with probability `p` (clamped to 0...1).
    public mutating func chance(_ p: Double) -> Bool {
        if p <= 0 { return false }
        if p >= 1 { return true }
        return Double(next() >> 11) * 0x1.0p-53 < p
    }

    public mutating func unit() -> Double { Double(next() >> 11) * 0x1.0p-53 }

    public mutating func pick<T>(_ items: [T]) -> T {
        precondition(!items.isEmpty, "pick from an empty list")
        return items[int(0...(items.count - 1))]
    }

    /// Index drawn with the given non-negative weights; at least one weight must be positive.
    public mutating func weighted(_ weights: [Double]) -> Int {
        let total = weights.reduce(0, +)
        precondition(total > 0, "weighted pick needs a positive total")
        var x = unit() * total
        for (i, w) in weights.enumerated() {
            if x < w { return i }
            x -= w
        }
        return weights.count - 1
    }
}
