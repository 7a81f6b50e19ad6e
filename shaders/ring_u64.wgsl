// Z_2^64 ring arithmetic on native u64 (needs wgpu::Features::SHADER_INT64).
//
// Same interface as ring.wgsl; WGSL integer arithmetic wraps, so every op is the plain one.

alias R = u64;

fn r_zero() -> R {
    return 0lu;
}

// Build a ring element from its low and high 32-bit words.
fn r_from_words(lo: u32, hi: u32) -> R {
    return u64(lo) | (u64(hi) << 32u);
}

fn r_add(a: R, b: R) -> R {
    return a + b;
}

fn r_sub(a: R, b: R) -> R {
    return a - b;
}

fn r_neg(a: R) -> R {
    return 0lu - a;
}

fn r_mul(a: R, b: R) -> R {
    return a * b;
}

// acc + a * b.
fn r_mac(acc: R, a: R, b: R) -> R {
    return acc + a * b;
}

fn r_xor(a: R, b: R) -> R {
    return a ^ b;
}

fn r_and(a: R, b: R) -> R {
    return a & b;
}

// Shifts by s < 64 (validated on the host).
fn r_shl(a: R, s: u32) -> R {
    return a << s;
}

fn r_shr(a: R, s: u32) -> R {
    return a >> s;
}

fn r_sar(a: R, s: u32) -> R {
    return bitcast<u64>(bitcast<i64>(a) >> s);
}
