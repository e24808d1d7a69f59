//! Every WGSL kernel of `shaders/`, declared once: its file, its storage
//! bindings (name and access, in binding order) and a `#[repr(C)]` mirror of
//! its `struct Params` (the uniform `p` at binding 0). One file per kernel
//! holds the declaration ([`declare_kernel!`]) and the launcher that records
//! the kernel's dispatches; [`Kernel`] lists them all.
//!
//! A dispatch takes the kernel's typed `Params` and `Bindings`
//! ([`super::program::Program::dispatch`]), so arguments cannot be passed in
//! the wrong order; the unit test below reflects every compiled variant of
//! every shader with naga and checks the declarations against it.
//!
//! Adding a kernel: the shader, its CPU twin in `crate::kernels`, a launcher
//! file here with its `mod` line, and its line in [`registry!`].

use super::program::{Binding, PARAM_BYTES};
use super::shaders::Variant;

/// Access to a storage binding, as the shader declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// `var<storage, read>`.
    Read,
    /// `var<storage, read_write>`.
    ReadWrite,
}

/// One field of a kernel's `Params`.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Field {
    pub name: &'static str,
    /// Byte offset in the struct.
    pub offset: usize,
    /// WGSL scalar type (`u32`, `i32`, `f32`).
    pub ty: &'static str,
}

/// What the host knows of one kernel.
#[derive(Debug)]
pub(crate) struct Declaration {
    /// File under `shaders/`.
    pub file: &'static str,
    /// The file as written.
    pub source: &'static str,
    /// Storage bindings 1, 2, … in order.
    pub bindings: &'static [(&'static str, Access)],
    /// Fields of `Params` in order.
    #[cfg(test)]
    pub params: &'static [Field],
    /// `size_of::<Params>()`.
    pub params_size: usize,
    /// Every variant seggpu compiles (the shader tests cover these).
    pub variants: fn() -> Vec<Variant>,
}

/// The parameters of one kernel: a dispatch of these runs that kernel with
/// its [`KernelParams::Bindings`].
pub(crate) trait KernelParams: bytemuck::Pod {
    /// The kernel.
    const KERNEL: Kernel;
    /// Its storage bindings.
    type Bindings: BindingSet;
}

/// A kernel's storage bindings.
pub(crate) trait BindingSet {
    /// The bindings in binding order (1, 2, …).
    fn in_order(self) -> Vec<Binding>;
}

/// Declares the kernel of one shader file in the module it is invoked in:
/// `struct Params` (the WGSL `struct Params`, field by field), `struct
/// Bindings` (one [`Binding`] per storage binding, in binding order) and
/// `DECLARATION`.
macro_rules! declare_kernel {
    (
        file: $file:literal,
        variants: $variants:expr,
        params { $($(#[$field_doc:meta])* $field:ident: $ty:ident,)* }
        bindings { $($(#[$binding_doc:meta])* $binding:ident: $access:ident,)* }
    ) => {
        /// The shader's `struct Params`, field by field.
        #[repr(C)]
        #[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        pub(crate) struct Params {
            $($(#[$field_doc])* pub $field: $ty,)*
        }

        /// The shader's storage bindings, in binding order.
        #[derive(Debug, Clone, Copy)]
        pub(crate) struct Bindings {
            $($(#[$binding_doc])* pub $binding: $crate::backend::gpu::program::Binding,)*
        }

        impl $crate::backend::gpu::kernels::BindingSet for Bindings {
            fn in_order(self) -> Vec<$crate::backend::gpu::program::Binding> {
                vec![$(self.$binding),*]
            }
        }

        /// This kernel's declaration.
        pub(crate) const DECLARATION: $crate::backend::gpu::kernels::Declaration =
            $crate::backend::gpu::kernels::Declaration {
                file: $file,
                source: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $file)),
                bindings: &[$((stringify!($binding), $crate::backend::gpu::kernels::Access::$access)),*],
                #[cfg(test)]
                params: &[$($crate::backend::gpu::kernels::Field {
                    name: stringify!($field),
                    offset: std::mem::offset_of!(Params, $field),
                    ty: stringify!($ty),
                }),*],
                params_size: std::mem::size_of::<Params>(),
                variants: $variants,
            };
    };
}

/// Lists every kernel once, `Name => module`: the [`Kernel`] enum and the
/// link from each module's `Params` to its kernel.
macro_rules! registry {
    ($($kernel:ident => $module:ident,)*) => {
        /// One compute kernel (one shader file, entry point `main`); its
        /// declaration and launcher are in the module of the same name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub(crate) enum Kernel {
            $($kernel,)*
        }

        impl Kernel {
            /// Every kernel.
            pub const ALL: &'static [Kernel] = &[$(Kernel::$kernel),*];

            /// Its declaration.
            pub fn declaration(self) -> &'static Declaration {
                match self {
                    $(Kernel::$kernel => &$module::DECLARATION,)*
                }
            }
        }

        $(
            impl KernelParams for $module::Params {
                const KERNEL: Kernel = Kernel::$kernel;
                type Bindings = $module::Bindings;
            }
            const _: () = assert!(
                std::mem::size_of::<$module::Params>() <= PARAM_BYTES as usize,
                "Params larger than one uniform slot"
            );
        )*
    };
}

pub(crate) mod components;
pub(crate) mod edge_similarity;
pub(crate) mod embed;
pub(crate) mod gather;
pub(crate) mod gatv2;
pub(crate) mod linear;
pub(crate) mod score;
pub(crate) mod train_adam;
pub(crate) mod train_common;
pub(crate) mod train_gather_rows;
pub(crate) mod train_gatv2_backward;
pub(crate) mod train_gatv2_forward;
pub(crate) mod train_linear_input_grad;
pub(crate) mod train_linear_weight_grad;
pub(crate) mod train_pair_grad;
pub(crate) mod train_pair_loss;
pub(crate) mod train_relu_backward;
pub(crate) mod train_sum_partials;

registry! {
    Embed => embed,
    Gather => gather,
    Linear => linear,
    Gatv2 => gatv2,
    Score => score,
    EdgeSimilarity => edge_similarity,
    Components => components,
    TrainGatv2Forward => train_gatv2_forward,
    TrainGatv2Backward => train_gatv2_backward,
    TrainGatherRows => train_gather_rows,
    TrainReluBackward => train_relu_backward,
    TrainLinearInputGrad => train_linear_input_grad,
    TrainLinearWeightGrad => train_linear_weight_grad,
    TrainSumPartials => train_sum_partials,
    TrainPairLoss => train_pair_loss,
    TrainPairGrad => train_pair_grad,
    TrainAdam => train_adam,
}

impl Kernel {
    /// File under `shaders/`.
    pub fn file(self) -> &'static str {
        self.declaration().file
    }

    /// Short name for labels and error messages.
    pub fn name(self) -> &'static str {
        self.file().trim_end_matches(".wgsl")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::gpu::shaders::{all_variants, wgsl, INCLUDES};

    /// A `Params` field as (name, byte offset, WGSL type).
    type ParamField = (String, usize, &'static str);
    /// A storage binding as (binding number, name, access).
    type StorageBinding = (u32, String, Access);

    /// What the shader of `kernel` in `variant` declares: its `Params`
    /// fields and size, and its storage bindings.
    fn reflect(kernel: Kernel, variant: Variant) -> (Vec<ParamField>, usize, Vec<StorageBinding>) {
        let source = wgsl(kernel, variant);
        let label = format!("{} {}", kernel.file(), variant.label());
        let module = naga::front::wgsl::parse_str(&source)
            .unwrap_or_else(|e| panic!("{label}: {}", e.emit_to_string(&source)));
        let mut params = None;
        let mut storage = Vec::new();
        for (_, var) in module.global_variables.iter() {
            let Some(binding) = &var.binding else {
                continue;
            };
            assert_eq!(binding.group, 0, "{label}: {:?} not in group 0", var.name);
            let name = var.name.clone().unwrap_or_default();
            match var.space {
                naga::AddressSpace::Uniform => {
                    assert_eq!(
                        (binding.binding, name.as_str()),
                        (0, "p"),
                        "{label}: the uniform must be `p` at binding 0"
                    );
                    params = Some(var.ty);
                }
                naga::AddressSpace::Storage { access } => {
                    let access = if access.contains(naga::StorageAccess::STORE) {
                        Access::ReadWrite
                    } else {
                        Access::Read
                    };
                    storage.push((binding.binding, name, access));
                }
                other => panic!("{label}: binding `{name}` in {other:?}"),
            }
        }
        storage.sort_by_key(|b| b.0);
        let ty = &module.types[params.unwrap_or_else(|| panic!("{label}: no uniform `p`"))];
        assert_eq!(
            ty.name.as_deref(),
            Some("Params"),
            "{label}: `p` is not a Params"
        );
        let naga::TypeInner::Struct { members, span } = &ty.inner else {
            panic!("{label}: Params is not a struct");
        };
        let fields = members
            .iter()
            .map(|m| {
                let ty = match module.types[m.ty].inner {
                    naga::TypeInner::Scalar(naga::Scalar::U32) => "u32",
                    naga::TypeInner::Scalar(naga::Scalar::I32) => "i32",
                    naga::TypeInner::Scalar(naga::Scalar::F32) => "f32",
                    ref other => panic!("{label}: Params field of type {other:?}"),
                };
                (m.name.clone().unwrap_or_default(), m.offset as usize, ty)
            })
            .collect();
        (fields, *span as usize, storage)
    }

    #[test]
    fn every_declaration_matches_its_shader_in_every_variant() {
        let variants = all_variants();
        for &kernel in Kernel::ALL {
            assert!(
                variants.iter().any(|(k, _)| *k == kernel),
                "{} has no variant",
                kernel.file()
            );
        }
        for (kernel, variant) in variants {
            let label = format!("{} {}", kernel.file(), variant.label());
            let declared = kernel.declaration();
            let (fields, size, storage) = reflect(kernel, variant);
            let declared_fields: Vec<ParamField> = declared
                .params
                .iter()
                .map(|f| (f.name.to_owned(), f.offset, f.ty))
                .collect();
            assert_eq!(
                declared_fields, fields,
                "{label}: Params fields (left: Rust declaration, right: WGSL)"
            );
            assert_eq!(
                declared.params_size, size,
                "{label}: size of Params (left: Rust, right: WGSL)"
            );
            let declared_bindings: Vec<StorageBinding> = declared
                .bindings
                .iter()
                .enumerate()
                .map(|(i, &(name, access))| (i as u32 + 1, name.to_owned(), access))
                .collect();
            assert_eq!(
                declared_bindings, storage,
                "{label}: storage bindings (left: Rust declaration, right: WGSL)"
            );
        }
    }

    #[test]
    fn every_shader_file_is_declared_once() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| f.ends_with(".wgsl") && !INCLUDES.iter().any(|(i, _)| i == f))
            .collect();
        files.sort();
        let mut declared: Vec<String> = Kernel::ALL.iter().map(|k| k.file().to_owned()).collect();
        declared.sort();
        assert_eq!(declared, files, "shaders/ and the registry differ");
    }
}
