// Scalar helpers of kiln's WGSL kernels, with the reference interpreter's semantics (the same
// algorithms as kiln-render's cstyle_helpers.h).

// Infinity and NaN from bit patterns held in private variables: WGSL rejects constant
// expressions that evaluate to them.
var<private> kiln_inf_bits: u32 = 0x7f800000u;
var<private> kiln_nan_bits: u32 = 0x7fc00000u;
fn kiln_inf() -> f32 { return bitcast<f32>(kiln_inf_bits); }
fn kiln_nan() -> f32 { return bitcast<f32>(kiln_nan_bits); }

// NaN tests on bits: naga translates WGSL's float `!=` to an *ordered* comparison, so
// `x != x` is false for NaN.
fn kiln_isnan(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }

fn kiln_clamp(v: i32, lo: i32, hi: i32) -> i32 { return select(select(v, hi, v > hi), lo, v < lo); }

// IEEE max that propagates NaN, like the interpreter (WGSL's max leaves NaN unspecified).
fn kiln_fmax(a: f32, b: f32) -> f32 {
    if (kiln_isnan(a) || kiln_isnan(b)) { return kiln_nan(); }
    return select(b, a, a > b);
}

fn kiln_imod(a: i32, b: i32) -> i32 {
    if (b == 0i || b == -1i) { return 0i; }
    return a % b;
}

// C's fmodf, exactly: binary long division of |a| by |b|. Every subtraction r - t has
// t <= r < 2t, so it is exact (Sterbenz); WGSL's own `%` (a - b * trunc(a / b)) is not.
fn kiln_fmod(a: f32, b: f32) -> f32 {
    let big = 3.40282347e38f;
    if (b == 0.0f || kiln_isnan(a) || kiln_isnan(b) || abs(a) > big) { return kiln_nan(); }
    if (abs(b) > big) { return a; }
    var r = abs(a);
    let d = abs(b);
    if (r < d) { return a; }
    var t = d;
    while (t <= r * 0.5f) { t = t * 2.0f; }
    loop {
        if (r >= t) { r = r - t; }
        if (t <= d) { break; }
        t = t * 0.5f;
    }
    return select(r, -r, a < 0.0f);
}

// float -> i32 as Rust's `v as i64 as i32`: truncate, saturate to i64, wrap to i32; NaN -> 0.
fn kiln_f2i(v: f32) -> i32 {
    if (kiln_isnan(v)) { return 0i; }
    let a = abs(v);
    if (a < 2147483648.0f) { return i32(v); }
    if (a >= 9223372036854775808.0f) { return select(0i, -1i, v > 0.0f); }
    // |v| in [2^31, 2^63) is an integer: mantissa << (exponent - 23); keep its low 32 bits.
    let bits = bitcast<u32>(a);
    let sh = i32((bits >> 23u) & 0xffu) - 127i - 23i;
    let m = (bits & 0x7fffffu) | 0x800000u;
    var low = 0u;
    if (sh < 32i) { low = m << u32(sh); }
    let r = bitcast<i32>(low);
    return select(r, -r, v < 0.0f);
}

// bf16 and f16 conversions, round to nearest even (the same algorithms as Rust's `half`).
fn kiln_bf16_to_f32(h: u32) -> f32 { return bitcast<f32>(h << 16u); }
fn kiln_f32_to_bf16(f: f32) -> u32 {
    let x = bitcast<u32>(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) { return ((x >> 16u) | 0x0040u) & 0xffffu; }
    let r = 0x8000u;
    return ((x >> 16u) + select(0u, 1u, (x & r) != 0u && (x & (3u * r - 1u)) != 0u)) & 0xffffu;
}
fn kiln_f16_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let man = h & 0x3ffu;
    if (e == 0u) {
        let v = f32(man) * 5.9604644775390625e-8f;
        return select(v, -v, sign != 0u);
    }
    if (e == 0x1fu) {
        return bitcast<f32>(sign | 0x7f800000u | select(0u, 0x400000u | (man << 13u), man != 0u));
    }
    return bitcast<f32>(sign | ((e + 112u) << 23u) | (man << 13u));
}
fn kiln_f32_to_f16(f: f32) -> u32 {
    let x = bitcast<u32>(f);
    let sign = x & 0x80000000u;
    let e = x & 0x7f800000u;
    let man = x & 0x007fffffu;
    if (e == 0x7f800000u) {
        return (sign >> 16u) | 0x7c00u | select(0u, 0x0200u, man != 0u) | (man >> 13u);
    }
    let hsign = sign >> 16u;
    let hexp = i32(e >> 23u) - 127i + 15i;
    if (hexp >= 0x1fi) { return hsign | 0x7c00u; }
    if (hexp <= 0i) {
        if (14i - hexp > 24i) { return hsign; }
        let m = man | 0x00800000u;
        var hman = m >> u32(14i - hexp);
        let r = 1u << u32(13i - hexp);
        if ((m & r) != 0u && (m & (3u * r - 1u)) != 0u) { hman = hman + 1u; }
        return hsign | hman;
    }
    var h = hsign | (u32(hexp) << 10u) | (man >> 13u);
    let r = 0x1000u;
    if ((man & r) != 0u && (man & (3u * r - 1u)) != 0u) { h = h + 1u; }
    return h;
}
fn kiln_round_f16(v: f32) -> f32 { return kiln_f16_to_f32(kiln_f32_to_f16(v)); }
fn kiln_round_bf16(v: f32) -> f32 { return kiln_bf16_to_f32(kiln_f32_to_bf16(v)); }
