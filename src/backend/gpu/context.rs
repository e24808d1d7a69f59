//! Adapter choice and device creation: which adapters exist, which one to
//! use, the limits and features to request, and the device's error channels
//! (device lost, uncaptured errors).

use std::sync::{Arc, Mutex};

use super::shaders::{TILE, WG};
use super::GpuError;

/// Arithmetic precision of the activations on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 everywhere (the default).
    #[default]
    F32,
    /// Activations stored as f16 (arithmetic in f32); needs `SHADER_F16`.
    F16,
}

/// Which limits to request from the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LimitsMode {
    /// Everything the adapter offers.
    #[default]
    Adapter,
    /// wgpu's default limits (`wgpu::Limits::default()`, or the downlevel
    /// defaults where the adapter has less): code must not depend on an
    /// adapter's generous limits. Env `SEGGPU_LIMITS=default`.
    Default,
}

/// How to pick and configure the GPU.
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// Case-insensitive substring of the adapter name (`--adapter`).
    pub adapter: Option<String>,
    /// Activation precision (`--precision`).
    pub precision: Precision,
    /// Limits to request.
    pub limits: LimitsMode,
    /// Skip software adapters (llvmpipe, WARP, SwiftShader) unless named by
    /// `adapter`: `--backend auto` sets this, a software rasteriser rarely
    /// beats the CPU backend.
    pub hardware_only: bool,
    /// Test hook: bind at most this many bytes per storage binding, to
    /// exercise chunking without gigabyte arrays.
    #[cfg(any(test, feature = "testing"))]
    pub max_binding_bytes_override: Option<u64>,
    /// Test hook: at most this many workgroups per dispatch dimension, to
    /// exercise 2-D dispatch splitting on small inputs.
    #[cfg(any(test, feature = "testing"))]
    pub max_workgroups_per_dim_override: Option<u32>,
    /// Test hook: hook + jump iterations per connected-components
    /// submission, to exercise continued submissions on small graphs.
    #[cfg(any(test, feature = "testing"))]
    pub component_iterations_override: Option<u32>,
}

/// The test hooks of [`GpuOptions`] in effect: none outside tests.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct TestHooks {
    pub max_binding_bytes: Option<u64>,
    pub max_workgroups_per_dim: Option<u32>,
    pub component_iterations: Option<u32>,
}

impl GpuOptions {
    /// Defaults, adjusted by the environment: `SEGGPU_LIMITS=default`
    /// requests wgpu's default limits.
    pub fn from_env() -> Self {
        Self::default().with_env()
    }

    /// The test hooks these options set.
    #[cfg(any(test, feature = "testing"))]
    pub(super) fn test_hooks(&self) -> TestHooks {
        TestHooks {
            max_binding_bytes: self.max_binding_bytes_override,
            max_workgroups_per_dim: self.max_workgroups_per_dim_override,
            component_iterations: self.component_iterations_override,
        }
    }

    /// The test hooks these options set: none outside tests.
    #[cfg(not(any(test, feature = "testing")))]
    pub(super) fn test_hooks(&self) -> TestHooks {
        TestHooks::default()
    }

    /// Applies `SEGGPU_LIMITS` to these options.
    pub fn with_env(mut self) -> Self {
        if std::env::var("SEGGPU_LIMITS").is_ok_and(|v| v.eq_ignore_ascii_case("default")) {
            self.limits = LimitsMode::Default;
        }
        self
    }
}

/// Whether `SEGGPU_F16=off` forbids the f16 path.
pub fn f16_disabled_by_env() -> bool {
    std::env::var("SEGGPU_F16").is_ok_and(|v| {
        matches!(
            v.to_ascii_lowercase().as_str(),
            "off" | "0" | "false" | "no"
        )
    })
}

/// Storage buffers the widest kernel (gatv2) binds.
pub const STORAGE_BUFFERS_NEEDED: u32 = 6;

/// The limits seggpu's kernels use, as the device granted them.
#[derive(Debug, Clone, Copy)]
pub struct EffectiveLimits {
    /// Largest storage binding, bytes (after any test override).
    pub max_binding: u64,
    /// Largest buffer, bytes.
    pub max_buffer: u64,
    /// Storage binding offset alignment, bytes.
    pub storage_align: u64,
    /// Uniform binding offset alignment, bytes.
    pub uniform_align: u64,
    /// Workgroups per dispatch dimension (after any test override).
    pub max_groups_per_dim: u32,
}

/// What `seggpu devices` prints about an adapter.
#[derive(Debug, Clone)]
pub struct AdapterReport {
    /// Adapter name.
    pub name: String,
    /// Graphics API.
    pub backend: String,
    /// Discrete, integrated, virtual, CPU (software) or other.
    pub device_type: String,
    /// Driver and driver info.
    pub driver: String,
    /// Limits seggpu uses, `name = value`.
    pub limits: Vec<(&'static str, u64)>,
    /// Whether `SHADER_F16` is offered.
    pub shader_f16: bool,
    /// Why seggpu cannot use it, if it cannot.
    pub unusable: Option<String>,
    /// Whether `--backend auto` would pick it.
    pub auto_choice: bool,
}

/// The native compute APIs. wgpu builds in only those of the target: Metal
/// on Apple platforms, DX12 and Vulkan on Windows, Vulkan elsewhere.
const NATIVE: wgpu::Backends = wgpu::Backends::VULKAN
    .union(wgpu::Backends::METAL)
    .union(wgpu::Backends::DX12);

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    quiet_display_probe();
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// Mesa's device-select Vulkan layer looks for the display's GPU whenever an
/// instance enables the Wayland or X11 surface extensions, as wgpu's always
/// does; without a display, libwayland then prints `error: XDG_RUNTIME_DIR
/// is invalid or not set` (Mesa 22). seggpu ranks adapters itself and never
/// presents, so it turns the layer off (`NODEVICE_SELECT=1`), unless the
/// user chose a device for it (`MESA_VK_DEVICE_SELECT`) or set the switch.
/// Done once, before the first instance, so no Vulkan call runs meanwhile.
#[cfg(all(unix, not(target_vendor = "apple"), not(target_os = "android")))]
fn quiet_display_probe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("MESA_VK_DEVICE_SELECT").is_none()
            && std::env::var_os("NODEVICE_SELECT").is_none()
        {
            std::env::set_var("NODEVICE_SELECT", "1");
        }
    });
}

/// Only Mesa on Linux and the BSDs has the device-select layer.
#[cfg(not(all(unix, not(target_vendor = "apple"), not(target_os = "android"))))]
fn quiet_display_probe() {}

/// Every adapter: those of `WGPU_BACKEND` when set; otherwise the native
/// APIs', and OpenGL's only when none of those has one (a machine without a
/// Vulkan driver). GL initialisation probes the display, noisily, and is
/// slower; with a native adapter present it would only add a second view of
/// the same device.
pub(super) fn adapters() -> Vec<wgpu::Adapter> {
    let enumerate = |backends: wgpu::Backends| {
        pollster::block_on(instance(backends).enumerate_adapters(backends))
    };
    if let Some(backends) = wgpu::Backends::from_env() {
        return enumerate(backends);
    }
    let native = enumerate(NATIVE);
    if !native.is_empty() {
        return native;
    }
    enumerate(wgpu::Backends::GL)
}

fn is_software(info: &wgpu::AdapterInfo) -> bool {
    info.device_type == wgpu::DeviceType::Cpu
}

/// Why an adapter cannot run seggpu's kernels, if it cannot.
fn unusable(adapter: &wgpu::Adapter) -> Option<String> {
    let caps = adapter.get_downlevel_capabilities();
    if !caps.flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS) {
        return Some("no compute shaders".into());
    }
    let limits = adapter.limits();
    if limits.max_storage_buffers_per_shader_stage < STORAGE_BUFFERS_NEEDED {
        return Some(format!(
            "{} storage buffers per shader stage, seggpu needs {STORAGE_BUFFERS_NEEDED}",
            limits.max_storage_buffers_per_shader_stage
        ));
    }
    if limits.max_compute_invocations_per_workgroup < TILE * TILE
        || limits.max_compute_workgroup_size_x < WG.max(TILE)
        || limits.max_compute_workgroup_size_y < TILE
    {
        return Some(format!(
            "workgroups of at most {} invocations ({}×{}), seggpu needs {}×{TILE} and {WG}×1",
            limits.max_compute_invocations_per_workgroup,
            limits.max_compute_workgroup_size_x,
            limits.max_compute_workgroup_size_y,
            TILE
        ));
    }
    None
}

fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let api = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    };
    (kind, api)
}

/// Picks the adapter `options` ask for.
pub(super) fn choose(
    adapters: Vec<wgpu::Adapter>,
    options: &GpuOptions,
) -> Result<wgpu::Adapter, GpuError> {
    let describe = |a: &wgpu::Adapter| {
        let info = a.get_info();
        format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
    };
    let available: Vec<String> = adapters.iter().map(describe).collect();
    let mut candidates: Vec<wgpu::Adapter> = match &options.adapter {
        Some(name) => {
            let needle = name.to_lowercase();
            let named: Vec<_> = adapters
                .into_iter()
                .filter(|a| a.get_info().name.to_lowercase().contains(&needle))
                .collect();
            if named.is_empty() {
                return Err(GpuError::AdapterNotFound {
                    name: name.clone(),
                    available,
                });
            }
            named
        }
        None => adapters
            .into_iter()
            .filter(|a| !(options.hardware_only && is_software(&a.get_info())))
            .collect(),
    };
    if candidates.is_empty() {
        return Err(GpuError::NoAdapter {
            detail: if available.is_empty() {
                "wgpu found no adapter".into()
            } else {
                format!(
                    "only software adapters: {} (name one with --adapter, or use --backend gpu)",
                    available.join(", ")
                )
            },
        });
    }
    let mut rejected = Vec::new();
    candidates.retain(|a| match unusable(a) {
        Some(why) => {
            rejected.push(format!("{}: {why}", describe(a)));
            false
        }
        None => true,
    });
    candidates.sort_by_key(|a| rank(&a.get_info()));
    candidates
        .into_iter()
        .next()
        .ok_or_else(|| GpuError::NoAdapter {
            detail: format!("no adapter can run seggpu: {}", rejected.join("; ")),
        })
}

/// `(name, value)` of the named fields of `wgpu::Limits` `$limits`.
macro_rules! named_limits {
    ($limits:ident, $($field:ident),*) => {
        vec![$((stringify!($field), u64::from($limits.$field))),*]
    };
}

/// Lists every adapter for `seggpu devices`.
pub fn list_adapters() -> Vec<AdapterReport> {
    let all = adapters();
    let auto_pick = choose(
        all.clone(),
        &GpuOptions {
            hardware_only: true,
            ..GpuOptions::default()
        },
    )
    .ok()
    .map(|a| a.get_info());
    all.iter()
        .map(|a| {
            let info = a.get_info();
            let l = a.limits();
            AdapterReport {
                name: info.name.clone(),
                backend: format!("{:?}", info.backend),
                device_type: format!("{:?}", info.device_type),
                driver: format!("{} {}", info.driver, info.driver_info)
                    .trim()
                    .to_owned(),
                limits: named_limits!(
                    l,
                    max_storage_buffer_binding_size,
                    max_buffer_size,
                    max_storage_buffers_per_shader_stage,
                    max_compute_workgroups_per_dimension,
                    max_compute_invocations_per_workgroup,
                    max_compute_workgroup_storage_size,
                    min_storage_buffer_offset_alignment,
                    min_uniform_buffer_offset_alignment
                ),
                shader_f16: a.features().contains(wgpu::Features::SHADER_F16),
                unusable: unusable(a),
                auto_choice: auto_pick.as_ref().is_some_and(|p| {
                    p.name == info.name && p.backend == info.backend && p.device == info.device
                }),
            }
        })
        .collect()
}

/// A device with its queue and error channels.
pub(super) struct GpuDevice {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: EffectiveLimits,
    pub shader_f16: bool,
    /// Set by the device-lost callback.
    pub lost: Arc<Mutex<Option<String>>>,
    /// Errors no error scope caught.
    pub uncaptured: Arc<Mutex<Vec<String>>>,
}

/// Opens the device: requests `SHADER_F16` only when f16 is wanted and
/// offered, and only limits the adapter has.
pub(super) fn open(
    adapter: &wgpu::Adapter,
    options: &GpuOptions,
    want_f16: bool,
) -> Result<GpuDevice, GpuError> {
    let info = adapter.get_info();
    let offered = adapter.limits();
    let required_limits = match options.limits {
        LimitsMode::Adapter => offered.clone(),
        LimitsMode::Default => {
            let default = wgpu::Limits::default();
            let downlevel = wgpu::Limits::downlevel_defaults();
            if default.check_limits(&offered) {
                default
            } else if downlevel.check_limits(&offered) {
                downlevel
            } else {
                return Err(GpuError::Unsupported {
                    adapter: info.name.clone(),
                    detail: "offers less than wgpu's downlevel default limits".into(),
                });
            }
        }
    };
    if required_limits.max_storage_buffers_per_shader_stage < STORAGE_BUFFERS_NEEDED {
        return Err(GpuError::Unsupported {
            adapter: info.name.clone(),
            detail: format!(
                "the requested limits allow {} storage buffers per shader stage, seggpu needs {STORAGE_BUFFERS_NEEDED}",
                required_limits.max_storage_buffers_per_shader_stage
            ),
        });
    }
    let shader_f16 = want_f16 && adapter.features().contains(wgpu::Features::SHADER_F16);
    let required_features = if shader_f16 {
        wgpu::Features::SHADER_F16
    } else {
        wgpu::Features::empty()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("seggpu"),
        required_features,
        required_limits,
        ..Default::default()
    }))
    .map_err(|e| GpuError::Unsupported {
        adapter: info.name.clone(),
        detail: format!("request_device failed: {e}"),
    })?;

    let lost = Arc::new(Mutex::new(None));
    let lost_slot = Arc::clone(&lost);
    device.set_device_lost_callback(move |reason, message| {
        if let Ok(mut slot) = lost_slot.lock() {
            *slot = Some(format!("{reason:?}: {message}"));
        }
    });
    let uncaptured = Arc::new(Mutex::new(Vec::new()));
    let uncaptured_slot = Arc::clone(&uncaptured);
    device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
        if let Ok(mut slot) = uncaptured_slot.lock() {
            slot.push(error.to_string());
        }
    }));

    let granted = device.limits();
    let hooks = options.test_hooks();
    let mut max_binding = granted
        .max_storage_buffer_binding_size
        .min(granted.max_buffer_size);
    if let Some(cap) = hooks.max_binding_bytes {
        max_binding = max_binding.min(cap);
    }
    let mut max_groups_per_dim = granted.max_compute_workgroups_per_dimension;
    if let Some(cap) = hooks.max_workgroups_per_dim {
        max_groups_per_dim = max_groups_per_dim.min(cap.max(1));
    }
    let storage_align = u64::from(granted.min_storage_buffer_offset_alignment).max(4);
    Ok(GpuDevice {
        device,
        queue,
        info,
        limits: EffectiveLimits {
            // Windows are aligned down: keep the binding a whole number of alignments.
            max_binding: (max_binding / storage_align * storage_align).max(storage_align),
            max_buffer: granted.max_buffer_size,
            storage_align,
            uniform_align: u64::from(granted.min_uniform_buffer_offset_alignment).max(4),
            max_groups_per_dim,
        },
        shader_f16,
        lost,
        uncaptured,
    })
}
