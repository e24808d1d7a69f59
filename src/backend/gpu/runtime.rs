//! Executes [`Program`]s: allocation (error-scoped), uploads, one command
//! encoder, one submission, one readback; device-lost and out-of-memory
//! conditions become [`GpuError`]s naming the stage.

use std::collections::HashMap;

use super::context::GpuDevice;
use super::kernels::{Access, Kernel};
use super::pool::{GroupKey, Pool};
use super::program::{Program, Step, PARAMS, PARAM_BYTES, STAGING};
use super::shaders::{self, Variant};
use super::GpuError;

pub(super) struct Runtime {
    pub dev: GpuDevice,
    layouts: HashMap<Kernel, (wgpu::BindGroupLayout, wgpu::PipelineLayout)>,
    pipelines: HashMap<(Kernel, Variant), wgpu::ComputePipeline>,
    pub pool: Pool,
}

fn storage_usage() -> wgpu::BufferUsages {
    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC
}

/// Errors caught by error scopes, in the order they were popped.
fn pop_scopes(scopes: Vec<wgpu::ErrorScopeGuard>) -> Vec<wgpu::Error> {
    scopes
        .into_iter()
        .rev()
        .filter_map(|s| pollster::block_on(s.pop()))
        .collect()
}

impl Runtime {
    pub fn new(dev: GpuDevice) -> Self {
        let mut layouts = HashMap::new();
        for &kernel in Kernel::ALL {
            let declaration = kernel.declaration();
            let mut entries = vec![wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    // wgpu checks at pipeline creation that the shader's
                    // `Params` fits this: a second check of the declaration.
                    min_binding_size: wgpu::BufferSize::new(declaration.params_size as u64),
                },
                count: None,
            }];
            for (i, &(_, access)) in declaration.bindings.iter().enumerate() {
                entries.push(wgpu::BindGroupLayoutEntry {
                    binding: i as u32 + 1,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage {
                            read_only: access == Access::Read,
                        },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                });
            }
            let group = dev
                .device
                .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some(kernel.name()),
                    entries: &entries,
                });
            let pipeline = dev
                .device
                .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some(kernel.name()),
                    bind_group_layouts: &[Some(&group)],
                    immediate_size: 0,
                });
            layouts.insert(kernel, (group, pipeline));
        }
        Self {
            dev,
            layouts,
            pipelines: HashMap::new(),
            pool: Pool::default(),
        }
    }

    /// Error scopes catching `filters`, popped by [`pop_scopes`].
    fn push_scopes(&self, filters: &[wgpu::ErrorFilter]) -> Vec<wgpu::ErrorScopeGuard> {
        filters
            .iter()
            .map(|&f| self.dev.device.push_error_scope(f))
            .collect()
    }

    fn check_lost(&self, stage: &str) -> Result<(), GpuError> {
        if let Some(reason) = self.dev.lost.lock().ok().and_then(|l| l.clone()) {
            return Err(GpuError::DeviceLost {
                stage: stage.to_owned(),
                detail: reason,
            });
        }
        Ok(())
    }

    fn take_uncaptured(&self) -> Vec<String> {
        self.dev
            .uncaptured
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }

    /// Compiles the pipeline of `kernel` in `variant` unless already done.
    fn pipeline(&mut self, kernel: Kernel, variant: Variant) {
        if self.pipelines.contains_key(&(kernel, variant)) {
            return;
        }
        debug_assert!(
            (kernel.declaration().variants)().contains(&variant),
            "{} {}: a variant the shader tests do not cover",
            kernel.file(),
            variant.label()
        );
        let source = shaders::wgsl(kernel, variant);
        let label = format!("{} {}", kernel.name(), variant.label());
        let module = self
            .dev
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&label),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        let pipeline = self
            .dev
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&label),
                layout: Some(&self.layouts[&kernel].1),
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
        self.pipelines.insert((kernel, variant), pipeline);
    }

    /// Turns errors caught while running `program` into one [`GpuError`].
    fn caught(
        &self,
        program: &Program,
        what: &str,
        errors: Vec<wgpu::Error>,
    ) -> Result<(), GpuError> {
        let mut messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        messages.extend(self.take_uncaptured());
        self.check_lost(&program.stage)?;
        if messages.is_empty() {
            return Ok(());
        }
        let detail = format!(
            "{what} (kernels: {}): {}",
            program.kernel_summary(),
            messages.join("; ")
        );
        let stage = program.stage.clone();
        if errors
            .iter()
            .any(|e| matches!(e, wgpu::Error::OutOfMemory { .. }))
        {
            Err(GpuError::OutOfMemory { stage, detail })
        } else {
            Err(GpuError::Validation { stage, detail })
        }
    }

    /// Runs `program`; returns the staging bytes.
    pub fn run(&mut self, program: &Program) -> Result<Vec<u8>, GpuError> {
        self.check_lost(&program.stage)?;
        self.take_uncaptured();
        let limits = program.limits;
        let stride = PARAM_BYTES.div_ceil(limits.uniform_align) * limits.uniform_align;
        let n_dispatch = program.dispatches() as u64;

        // Allocation and pipeline creation.
        let scopes = self.push_scopes(&[
            wgpu::ErrorFilter::OutOfMemory,
            wgpu::ErrorFilter::Validation,
        ]);
        let mut sizes: Vec<_> = program.sizes.iter().map(|(s, b)| (*s, *b)).collect();
        sizes.sort();
        let mut allocation = Ok(());
        for (slot, bytes) in sizes {
            allocation = allocation.and_then(|()| {
                self.pool.ensure(
                    &self.dev.device,
                    slot,
                    bytes,
                    storage_usage(),
                    limits.max_buffer,
                )
            });
        }
        allocation = allocation.and_then(|()| {
            self.pool.ensure(
                &self.dev.device,
                PARAMS,
                n_dispatch.max(1) * stride,
                wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                limits.max_buffer,
            )
        });
        allocation = allocation.and_then(|()| {
            self.pool.ensure(
                &self.dev.device,
                STAGING,
                program.readback_bytes.max(8),
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                limits.max_buffer,
            )
        });
        for step in &program.steps {
            if let Step::Dispatch(d) = step {
                self.pipeline(d.kernel, d.variant);
            }
        }
        let errors = pop_scopes(scopes);
        if let Err(mut e) = allocation {
            if let GpuError::TooLarge { stage, .. } = &mut e {
                stage.clone_from(&program.stage);
            }
            return Err(e);
        }
        self.caught(program, "allocating buffers and pipelines", errors)?;

        // Uploads.
        for (slot, bytes) in &program.uploads {
            if !bytes.is_empty() {
                self.dev
                    .queue
                    .write_buffer(self.pool.buffer(slot), 0, bytes);
            }
        }
        let mut params = vec![0u8; (n_dispatch * stride) as usize];
        let mut groups = Vec::with_capacity(n_dispatch as usize);
        let mut i = 0usize;
        for step in &program.steps {
            let Step::Dispatch(d) = step else { continue };
            let at = i * stride as usize;
            params[at..at + PARAM_BYTES as usize].copy_from_slice(&d.params);
            i += 1;
            let mut ranges = vec![self.pool.range(
                PARAMS,
                super::program::Window::Range {
                    offset: 0,
                    size: PARAM_BYTES,
                },
                limits.max_binding,
            )];
            for b in &d.bindings {
                ranges.push(self.pool.range(b.slot, b.window, limits.max_binding));
            }
            let key = GroupKey {
                kernel: d.kernel,
                ranges,
            };
            let layout = &self.layouts[&d.kernel].0;
            let device = &self.dev.device;
            let group = self.pool.group(key.clone(), |pool| {
                let entries: Vec<wgpu::BindGroupEntry> = key
                    .ranges
                    .iter()
                    .enumerate()
                    .map(|(binding, &(id, offset, size))| wgpu::BindGroupEntry {
                        binding: binding as u32,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: pool.buffer_by_id(id),
                            offset,
                            size: wgpu::BufferSize::new(size),
                        }),
                    })
                    .collect();
                device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(d.kernel.name()),
                    layout,
                    entries: &entries,
                })
            });
            groups.push(group);
        }
        if !params.is_empty() {
            self.dev
                .queue
                .write_buffer(self.pool.buffer(PARAMS), 0, &params);
        }

        // One encoder, one submission.
        let scopes = self.push_scopes(&[
            wgpu::ErrorFilter::OutOfMemory,
            wgpu::ErrorFilter::Validation,
            wgpu::ErrorFilter::Internal,
        ]);
        let mut encoder = self
            .dev
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(&program.stage),
            });
        let mut pass: Option<wgpu::ComputePass> = None;
        let mut i = 0usize;
        for step in &program.steps {
            match step {
                Step::Dispatch(d) => {
                    let pass = pass.get_or_insert_with(|| {
                        encoder
                            .begin_compute_pass(&wgpu::ComputePassDescriptor {
                                label: Some(&program.stage),
                                timestamp_writes: None,
                            })
                            .forget_lifetime()
                    });
                    pass.set_pipeline(&self.pipelines[&(d.kernel, d.variant)]);
                    pass.set_bind_group(0, &groups[i], &[(i as u64 * stride) as u32]);
                    pass.dispatch_workgroups(d.groups.0, d.groups.1, 1);
                    i += 1;
                }
                Step::Readback {
                    slot,
                    offset,
                    bytes,
                    to,
                } => {
                    pass = None;
                    encoder.copy_buffer_to_buffer(
                        self.pool.buffer(slot),
                        *offset,
                        self.pool.buffer(STAGING),
                        *to,
                        *bytes,
                    );
                }
            }
        }
        drop(pass);
        let submission = self.dev.queue.submit([encoder.finish()]);
        let staging = self.pool.buffer(STAGING).clone();
        let (sender, receiver) = std::sync::mpsc::channel();
        if program.readback_bytes > 0 {
            staging
                .slice(..program.readback_bytes)
                .map_async(wgpu::MapMode::Read, move |r| {
                    let _ = sender.send(r);
                });
        }
        let polled = self.dev.device.poll(wgpu::PollType::Wait {
            submission_index: Some(submission),
            timeout: None,
        });
        let errors = pop_scopes(scopes);
        if let Err(e) = polled {
            self.check_lost(&program.stage)?;
            return Err(GpuError::DeviceLost {
                stage: program.stage.clone(),
                detail: format!("waiting for the GPU failed: {e}"),
            });
        }
        self.caught(program, "running", errors)?;
        if program.readback_bytes == 0 {
            return Ok(Vec::new());
        }
        match receiver.try_recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(GpuError::DeviceLost {
                    stage: program.stage.clone(),
                    detail: format!("reading results back failed: {e}"),
                })
            }
            Err(_) => {
                // The callback may run on the next poll.
                let _ = self.dev.device.poll(wgpu::PollType::wait_indefinitely());
                match receiver.recv_timeout(std::time::Duration::from_secs(60)) {
                    Ok(Ok(())) => {}
                    other => {
                        self.check_lost(&program.stage)?;
                        return Err(GpuError::DeviceLost {
                            stage: program.stage.clone(),
                            detail: format!("results never came back: {other:?}"),
                        });
                    }
                }
            }
        }
        let bytes = {
            let view = staging
                .slice(..program.readback_bytes)
                .get_mapped_range()
                .map_err(|e| GpuError::Internal {
                    stage: program.stage.clone(),
                    detail: format!("mapping results: {e}"),
                })?;
            view.to_vec()
        };
        staging.unmap();
        Ok(bytes)
    }
}
