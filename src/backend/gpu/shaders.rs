//! The WGSL kernels of `shaders/` and the small step that turns a shader file
//! into compilable source: `//!include NAME` lines are replaced by the named
//! file, and a generated prelude defines the variant's element types and
//! sizes (`act`, `act_in`, `WG`, `TILE`, `TM`, `TN`, `MAX_C`). No template engine.

use std::fmt::Write as _;

use super::kernels::Kernel;

/// Workgroup size of the 1-D kernels (all but linear).
pub const WG: u32 = 64;
/// Tile edge of the linear kernel (a TILE×TILE workgroup, TILE k-values
/// staged at a time).
pub const TILE: u32 = 16;
/// Output rows per linear invocation (a workgroup covers TILE·TM rows).
pub const TM: u32 = 4;
/// Output columns per linear invocation (a workgroup covers TILE·TN columns).
pub const TN: u32 = 2;
/// Smallest and largest `MAX_C` (channels per head) the gatv2 variants use.
pub const MIN_MAX_C: u32 = 8;
/// Largest channels per head the gatv2 kernel supports.
pub const LARGEST_MAX_C: u32 = 256;

/// Shader files that may be included.
pub(crate) const INCLUDES: &[(&str, &str)] = &[
    ("common.wgsl", include_str!("../../../shaders/common.wgsl")),
    (
        "train_exp.wgsl",
        include_str!("../../../shaders/train_exp.wgsl"),
    ),
];

/// Element type of a buffer in a shader variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Elem {
    /// 32-bit float.
    F32,
    /// 16-bit float (needs `SHADER_F16`).
    F16,
}

impl Elem {
    /// WGSL type name.
    pub fn wgsl(self) -> &'static str {
        match self {
            Elem::F32 => "f32",
            Elem::F16 => "f16",
        }
    }

    /// Bytes per element.
    pub fn bytes(self) -> u64 {
        match self {
            Elem::F32 => 4,
            Elem::F16 => 2,
        }
    }
}

/// What the prelude defines for one compiled shader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Variant {
    /// Activation element type (`act`).
    pub act: Elem,
    /// Linear input element type (`act_in`).
    pub act_in: Elem,
    /// Channels-per-head capacity of the gatv2 kernel (`MAX_C`).
    pub max_c: u32,
}

impl Variant {
    /// A variant with activations (and inputs) of type `act`.
    pub fn of(act: Elem) -> Self {
        Self {
            act,
            act_in: act,
            max_c: MIN_MAX_C,
        }
    }

    /// Whether the variant needs the `f16` extension.
    pub fn uses_f16(&self) -> bool {
        self.act == Elem::F16 || self.act_in == Elem::F16
    }

    /// Short description for labels.
    pub fn label(&self) -> String {
        format!(
            "{}/{} C≤{}",
            self.act.wgsl(),
            self.act_in.wgsl(),
            self.max_c
        )
    }
}

/// `MAX_C` for `channels` per head: the next power of two, at least
/// [`MIN_MAX_C`]; `None` above [`LARGEST_MAX_C`].
pub fn max_c_for(channels: usize) -> Option<u32> {
    let c = (channels.max(1) as u32).next_power_of_two().max(MIN_MAX_C);
    (c <= LARGEST_MAX_C).then_some(c)
}

/// The variants of a kernel without activation buffers: f32 only.
pub fn f32_only() -> Vec<Variant> {
    vec![Variant::of(Elem::F32)]
}

/// The variants of a kernel with activation buffers: f32 and f16.
pub fn f32_and_f16() -> Vec<Variant> {
    vec![Variant::of(Elem::F32), Variant::of(Elem::F16)]
}

/// Replaces every `//!include NAME` line of `text` by the named file
/// (recursively, a file at most once).
pub fn expand_includes(text: &str) -> Result<String, String> {
    fn go(text: &str, out: &mut String, seen: &mut Vec<&'static str>) -> Result<(), String> {
        for line in text.lines() {
            match line.trim().strip_prefix("//!include") {
                Some(name) => {
                    let name = name.trim();
                    let (file, body) = INCLUDES
                        .iter()
                        .find(|(file, _)| *file == name)
                        .ok_or_else(|| format!("unknown include `{name}`"))?;
                    if !seen.contains(file) {
                        seen.push(file);
                        go(body, out, seen)?;
                    }
                }
                None => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        Ok(())
    }
    let mut out = String::with_capacity(text.len() * 2);
    go(text, &mut out, &mut Vec::new())?;
    Ok(out)
}

/// The compilable WGSL of `kernel` in `variant`: prelude + include-expanded file.
pub fn wgsl(kernel: Kernel, variant: Variant) -> String {
    let mut out = String::new();
    if variant.uses_f16() {
        out.push_str("enable f16;\n");
    }
    let _ = writeln!(
        out,
        "// seggpu {} — variant {}\nalias act = {};\nalias act_in = {};\nconst WG: u32 = {WG}u;\nconst TILE: u32 = {TILE}u;\nconst TM: u32 = {TM}u;\nconst TN: u32 = {TN}u;\nconst MAX_C: u32 = {}u;\n",
        kernel.file(),
        variant.label(),
        variant.act.wgsl(),
        variant.act_in.wgsl(),
        variant.max_c,
    );
    out.push_str(&expand_includes(kernel.declaration().source).expect("shader includes are valid"));
    out
}

/// Every (kernel, variant) pair seggpu may compile.
#[cfg(test)]
pub fn all_variants() -> Vec<(Kernel, Variant)> {
    Kernel::ALL
        .iter()
        .flat_map(|&k| {
            (k.declaration().variants)()
                .into_iter()
                .map(move |v| (k, v))
        })
        .collect()
}

/// Parses and validates `kernel` in `variant` with naga, with exactly the
/// capabilities the variant needs.
#[cfg(test)]
pub fn validate(kernel: Kernel, variant: Variant) -> Result<(), String> {
    let source = wgsl(kernel, variant);
    let module = naga::front::wgsl::parse_str(&source)
        .map_err(|e| e.emit_to_string_with_path(&source, kernel.file()))?;
    let capabilities = if variant.uses_f16() {
        naga::valid::Capabilities::SHADER_FLOAT16
    } else {
        naga::valid::Capabilities::empty()
    };
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities)
        .validate(&module)
        .map_err(|e| e.emit_to_string_with_path(&source, kernel.file()))?;
    let entry = module
        .entry_points
        .iter()
        .find(|e| e.name == "main")
        .ok_or_else(|| format!("{}: no entry point `main`", kernel.file()))?;
    if entry.stage != naga::ShaderStage::Compute {
        return Err(format!(
            "{}: `main` is not a compute entry point",
            kernel.file()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shader_variant_validates_with_naga() {
        for (kernel, variant) in all_variants() {
            validate(kernel, variant)
                .unwrap_or_else(|e| panic!("{} {}:\n{e}", kernel.file(), variant.label()));
        }
    }

    /// The value of the f32 constant `name` in `kernel`.
    fn f32_constant(kernel: Kernel, name: &str) -> f32 {
        let source = wgsl(kernel, Variant::of(Elem::F32));
        let module = naga::front::wgsl::parse_str(&source).unwrap();
        let (_, constant) = module
            .constants
            .iter()
            .find(|(_, c)| c.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{name}"));
        match module.global_expressions[constant.init] {
            naga::Expression::Literal(naga::Literal::F32(v)) => v,
            ref other => panic!("{name} is {other:?}"),
        }
    }

    #[test]
    fn the_softmax_start_is_exactly_f32_min() {
        assert_eq!(f32_constant(Kernel::Gatv2, "F32_LOWEST"), f32::MIN);
    }

    #[test]
    fn the_bin_rule_threshold_is_exactly_2_to_the_minus_54() {
        assert_eq!(
            f32_constant(Kernel::EdgeSimilarity, "ROUNDS_TO_ONE"),
            2f32.powi(-54)
        );
    }

    #[test]
    fn f16_variants_need_the_capability() {
        let source = wgsl(Kernel::Embed, Variant::of(Elem::F16));
        let module = naga::front::wgsl::parse_str(&source).unwrap();
        let result = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module);
        assert!(
            result.is_err(),
            "f16 shader validated without SHADER_FLOAT16"
        );
    }

    #[test]
    fn includes_expand_once_and_unknown_includes_fail() {
        let text = "//!include common.wgsl\n//!include common.wgsl\nfn f() {}\n";
        let out = expand_includes(text).unwrap();
        assert_eq!(out.matches("fn linear_index").count(), 1);
        assert!(!out.lines().any(|l| l.trim().starts_with("//!include")));
        assert!(expand_includes("//!include nope.wgsl\n").is_err());
    }

    #[test]
    fn max_c_is_a_power_of_two_cover() {
        assert_eq!(max_c_for(1), Some(8));
        assert_eq!(max_c_for(32), Some(32));
        assert_eq!(max_c_for(33), Some(64));
        assert_eq!(max_c_for(256), Some(256));
        assert_eq!(max_c_for(257), None);
    }
}
