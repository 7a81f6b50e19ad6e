// Z_2^64 ring arithmetic on (lo, hi) u32 pairs: the portable variant.
//
// Every kernel file is compiled after exactly one ring prelude (this file or ring_u64.wgsl);
// kernels only touch ring values through `R` and the `r_*` functions below, so both preludes
// must give identical bits. Storage layout: one element = 8 bytes little-endian, which reads
// as `vec2<u32>(lo, hi)` here and as `u64` in the native prelude.

alias R = vec2<u32>;

fn r_zero() -> R {
    return vec2<u32>(0u, 0u);
}

// Build a ring element from its low and high 32-bit words.
fn r_from_words(lo: u32, hi: u32) -> R {
    return vec2<u32>(lo, hi);
}

fn r_add(a: R, b: R) -> R {
    let lo = a.x + b.x;
    return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}

fn r_sub(a: R, b: R) -> R {
    return vec2<u32>(a.x - b.x, a.y - b.y - select(0u, 1u, a.x < b.x));
}

fn r_neg(a: R) -> R {
    return r_sub(r_zero(), a);
}

// Full 32x32 -> 64-bit product from 16-bit halves (WGSL has no mulhi).
fn mul_wide32(a: u32, b: u32) -> R {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    // mid may carry out of 32 bits (p01, p10 < 2^32 each).
    let mid = p01 + p10;
    let mid_carry = select(0u, 0x10000u, mid < p01);
    let lo = p00 + (mid << 16u);
    let lo_carry = select(0u, 1u, lo < p00);
    return vec2<u32>(lo, p11 + (mid >> 16u) + mid_carry + lo_carry);
}

// Low 64 bits of a 64x64 product: full product of the low words plus the low 32 bits of the
// two cross products (the high x high term lies entirely above bit 64).
fn r_mul(a: R, b: R) -> R {
    let p = mul_wide32(a.x, b.x);
    return vec2<u32>(p.x, p.y + a.x * b.y + a.y * b.x);
}

// acc + a * b.
fn r_mac(acc: R, a: R, b: R) -> R {
    return r_add(acc, r_mul(a, b));
}

fn r_xor(a: R, b: R) -> R {
    return a ^ b;
}

fn r_and(a: R, b: R) -> R {
    return a & b;
}

// Left shift by s < 64. WGSL takes u32 shift amounts modulo 32, so 0 and >= 32 are special.
fn r_shl(a: R, s: u32) -> R {
    if (s == 0u) {
        return a;
    }
    if (s < 32u) {
        return vec2<u32>(a.x << s, (a.y << s) | (a.x >> (32u - s)));
    }
    return vec2<u32>(0u, a.x << (s - 32u));
}

// Logical right shift by s < 64.
fn r_shr(a: R, s: u32) -> R {
    if (s == 0u) {
        return a;
    }
    if (s < 32u) {
        return vec2<u32>((a.x >> s) | (a.y << (32u - s)), a.y >> s);
    }
    return vec2<u32>(a.y >> (s - 32u), 0u);
}

// Arithmetic (sign-extending) right shift by s < 64.
fn r_sar(a: R, s: u32) -> R {
    let hi = bitcast<i32>(a.y);
    if (s == 0u) {
        return a;
    }
    if (s < 32u) {
        return vec2<u32>((a.x >> s) | (a.y << (32u - s)), bitcast<u32>(hi >> s));
    }
    return vec2<u32>(bitcast<u32>(hi >> (s - 32u)), bitcast<u32>(hi >> 31u));
}
