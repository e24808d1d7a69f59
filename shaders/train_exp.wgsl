// exp(x) as a fixed sequence of f32 operations (Cephes' expf: Cody–Waite
// reduction by ln 2, a degree-7 polynomial in fmas, a scale by 2^n), so that the
// training shaders and their CPU twins round alike: the built-in exp is the
// driver's own approximation. Twin: src/train/kernels.rs (`portable_exp`).
// For x ≤ EXP_MAX (callers clamp); results below f32's smallest normal are 0.

// log2(e) rounded to f32 (Rust's f32::consts::LOG2_E).
const EXP_LOG2E: f32 = 1.442695;
// ln 2 in two parts; n · EXP_LN2_HI is exact for |n| ≤ 2^15.
const EXP_LN2_HI: f32 = 0.6933594;
const EXP_LN2_LO: f32 = -2.1219444e-4;
// exp(EXP_MAX) is the largest finite f32 the polynomial reaches.
const EXP_MAX: f32 = 88.72283;
// ln of the smallest normal f32.
const EXP_MIN: f32 = -87.33654;

// 2^n for n in [-126, 127], exactly.
fn exp_pow2(n: i32) -> f32 {
    return bitcast<f32>(u32(n + 127) << 23u);
}

fn portable_exp(x: f32) -> f32 {
    if (x < EXP_MIN) {
        return 0.0;
    }
    // Every multiply-add is an explicit fma, as in the twin: a compiler may
    // fuse a multiply and an add written apart, never split an fma.
    let n = round(x * EXP_LOG2E);
    var r = fma(-n, EXP_LN2_HI, x);
    r = fma(-n, EXP_LN2_LO, r);
    let r2 = r * r;
    var q = 1.9875691e-4f;
    q = fma(q, r, 1.3981999e-3f);
    q = fma(q, r, 8.333452e-3f);
    q = fma(q, r, 4.1665796e-2f);
    q = fma(q, r, 1.6666665e-1f);
    q = fma(q, r, 0.5f);
    let e = fma(q, r2, r) + 1.0;
    // Two exact scalings: 2^n alone overflows its exponent field at n = 128.
    let k = i32(n);
    let half = k / 2;
    return e * exp_pow2(half) * exp_pow2(k - half);
}
