//! The wasmtime side of the policy host: components compiled once into
//! `InstancePre`s, instances that serve one caller only, CPU and memory
//! limits.
//!
//! Invariants: an instance, in its own `Store`, serves the calls of one
//! caller only, so no state crosses callers: a caller's first call on a
//! policy configuration gets a fresh, never-used instance, which is then
//! kept warm for that caller's next calls on that configuration ([`Warm`]:
//! both hooks of one call, and the calls after it). An instance is freed,
//! never handed to anyone else, once it fails in any way, has served
//! [`MAX_USES`] calls, has grown its memory by [`MAX_GROWTH`], holds more
//! than [`MAX_KEPT_HANDLES`] WASI resources after its call, or is the
//! least recently used past [`WARM_PER_POLICY`]; none is kept while the
//! host holds [`WARM_TOTAL`] across its policies. The calls made at load
//! (`info`, `scope`) each get a fresh instance of their own. Every store
//! carries memory limits and an epoch deadline set just before each call;
//! nothing a guest does can panic the host: traps, timeouts and limit hits
//! come back as [`HookError`]s, which the caller turns into denies.
//!
//! Guest code never blocks a thread and never touches an async runtime.
//! Hooks are called from tokio worker threads, the background thread and the
//! CLI alike, so WASI is linked in its async form and every instantiation and
//! call is driven by [`run_now`], which polls its future once in place with a
//! waker that does nothing. WASI's sync form cannot be used: it wraps each
//! blocking host function (a stream's flush, a pollable's wait, a resource
//! drop) in `block_on` on the current tokio runtime, which panics on a worker
//! thread, so a policy that printed took its call down. Nothing a policy can
//! reach waits: its stdout and stderr are an in-memory sink that is always
//! ready ([`super::output`]), stdin is empty and closed, there is no
//! filesystem or network, and a clock's pollable is either ready at once or
//! never (see [`Timer`]). A guest that waits on something that is not ready
//! (a sleep, a timer) leaves the future pending: the call is dropped and
//! fails closed with [`HookError::Blocked`] at once, not at its deadline.
//!
//! What a hook printed comes back with its result ([`Hooked`]), kept within
//! the bounds of [`super::output`].
//!
//! Instantiation is kept off the request path: each policy keeps a few
//! ready, never-used instances, refilled by a background thread. When the
//! pool is empty a call instantiates inline, so the pool affects speed,
//! never behaviour. Freeing a used instance (resetting its memory) happens
//! on the same thread, up to a bound past which calls free their own. Waking
//! that thread costs a call more than the work it hands over, so calls
//! gather their jobs and wake it only when a pool runs low or a batch is
//! full; the epoch ticker sends what is left within a tick.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, ComponentExportIndex, HasSelf, Instance, Linker, Resource, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::clocks::WasiClocksView;
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::{DynPollable, Pollable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::output::{OutputSink, Printed};

mod bindings {
    // Async exports: a call goes through a fiber whose future `run_now`
    // polls, so a WASI host function that would wait suspends it instead of
    // blocking the thread (see the module docs).
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "policy",
        exports: { default: async },
    });
}

mod scan_bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        interfaces: "import veil:policy/scan@0.1.0;",
        imports: { default: trappable },
    });
}

pub use bindings::veil::policy::types as wit;
use scan_bindings::veil::policy::scan as wit_scan;

use crate::detect;

/// What the detectors found in the response a hook call is deciding: set
/// for `on-response` calls of policies that import `scan`.
pub type Findings = Arc<Result<Vec<detect::Finding>, detect::ScanError>>;

/// Limits applied to every hook call.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// CPU wall-clock budget of one hook call.
    pub deadline: Duration,
    /// Extra budget of an `on-response` call per MiB of response body: a
    /// policy reading a large listing needs time in proportion to it.
    pub deadline_per_mib: Duration,
    /// Linear memory one instance may use, in bytes.
    pub memory_bytes: usize,
    /// Instances that may run at once (sizes the pooling allocator).
    pub max_concurrent: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_millis(50),
            deadline_per_mib: Duration::from_millis(150),
            memory_bytes: 64 << 20,
            max_concurrent: 256,
        }
    }
}

/// The epoch ticks once per this period; deadlines are counted in ticks.
const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Bound on instantiating a component (its start functions). They run
/// when the policy loads, with no input, so one that spins never loads; the
/// bound is generous because it only has to stop that, and the first
/// instance in a fresh pool slot of an interpreter's component (a 12-19 MB
/// memory image written in) can take tens of milliseconds of wall clock on
/// a busy host. A hook's own deadline starts after it.
const INSTANTIATE_DEADLINE: Duration = Duration::from_secs(1);
/// Largest policy file accepted.
pub const MAX_POLICY_FILE: u64 = 256 << 20;

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The file is too large.
    #[error("{path}: {size} bytes is more than the {MAX_POLICY_FILE} byte limit")]
    TooLarge { path: PathBuf, size: u64 },
    /// Not a WebAssembly component (a core module, another format, or truncated).
    #[error("{path}: not a valid WebAssembly component: {reason}")]
    NotAComponent { path: PathBuf, reason: String },
    /// A component, but not of Veil's policy world at this version.
    #[error("{path}: does not implement world veil:policy/policy@0.1.0: {reason}")]
    WrongWorld { path: PathBuf, reason: String },
    /// The `info` export failed or returned nonsense.
    #[error("{path}: info() failed: {reason}")]
    Info { path: PathBuf, reason: String },
    /// The `scope` export has a type other than the `scoped-policy` world's.
    #[error("{path}: does not implement world veil:policy/scoped-policy@0.1.0: {reason}")]
    WrongScope { path: PathBuf, reason: String },
}

/// Why one hook call on one policy failed. Each becomes a deny.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The instance could not be created (pool exhausted, start trapped).
    #[error("instantiation failed: {0}")]
    Instantiate(String),
    /// The CPU deadline passed.
    #[error("exceeded its {0} ms CPU deadline")]
    Timeout(u128),
    /// The guest tried to use more memory than allowed.
    #[error("exceeded its {0} MiB memory limit")]
    Memory(usize),
    /// Any other trap (panic, unreachable, stack overflow …).
    #[error("trapped: {0}")]
    Trap(String),
    /// The guest waited for something that is not ready (a sleep, a timer):
    /// policies are pure functions of their inputs and cannot wait.
    #[error("waited on I/O or a timer, which policies cannot do")]
    Blocked,
}

/// A hook call's result and what the guest printed during it.
#[derive(Debug)]
pub struct Hooked<T> {
    /// What the hook returned, or why it failed.
    pub result: Result<T, HookError>,
    /// What it printed on stdout and stderr; `None` when nothing.
    pub printed: Option<Printed>,
}

/// Per-call host state: one per store, dropped with it.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: Limiter,
    findings: Option<Findings>,
    /// The guest's stdout and stderr.
    output: OutputSink,
}

impl wit_scan::Host for HostState {
    fn findings(&mut self) -> wasmtime::Result<Vec<wit_scan::Finding>> {
        let Some(found) = &self.findings else {
            wasmtime::bail!("scan.findings() is only available in on-response");
        };
        let found = found.as_ref().as_ref().map_err(|e| wasmtime::format_err!("scan.findings(): {e}"))?;
        Ok(found
            .iter()
            .map(|f| wit_scan::Finding {
                path: f.path.clone(),
                kind: match f.kind {
                    detect::Kind::AccessKeyId => wit_scan::FindingKind::AccessKeyId,
                    detect::Kind::Secret => wit_scan::FindingKind::Secret,
                },
                detector: f.detector.to_string(),
            })
            .collect())
    }
}

/// The store's limits, and how much its memories grew after they were
/// created: what decides when a warm instance is replaced.
struct Limiter {
    limits: StoreLimits,
    grown: usize,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        // A memory being created grows from 0 to its initial size.
        if allowed && current > 0 {
            self.grown = self.grown.saturating_add(desired.saturating_sub(current));
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// A `wasi:clocks/monotonic-clock` pollable that never needs a runtime:
/// WASI's own sleeps on tokio's timer, which panics where no runtime is
/// current (the background thread, the CLI) and would only make a policy
/// wait where one is. A deadline already passed is ready at once; a later
/// one never, so a guest that sleeps fails at once ([`HookError::Blocked`]).
struct Timer {
    passed: bool,
}

#[wasmtime_wasi::async_trait]
impl Pollable for Timer {
    async fn ready(&mut self) {
        if !self.passed {
            std::future::pending::<()>().await;
        }
    }
}

impl HostState {
    /// The resources the guest holds now.
    fn handles(&mut self) -> usize {
        self.table.iter_mut().count()
    }

    fn timer(&mut self, passed: bool) -> wasmtime::Result<Resource<DynPollable>> {
        let timer = self.table.push(Timer { passed })?;
        wasmtime_wasi::p2::subscribe(&mut self.table, timer)
    }
}

/// Shadows WASI's monotonic clock in the linker: the same clock, and
/// [`Timer`]s for its pollables.
impl monotonic_clock::Host for HostState {
    fn now(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        monotonic_clock::Host::now(&mut self.clocks())
    }

    fn resolution(&mut self) -> wasmtime::Result<monotonic_clock::Duration> {
        monotonic_clock::Host::resolution(&mut self.clocks())
    }

    fn subscribe_instant(&mut self, when: monotonic_clock::Instant) -> wasmtime::Result<Resource<DynPollable>> {
        let now = monotonic_clock::Host::now(&mut self.clocks())?;
        self.timer(when <= now)
    }

    fn subscribe_duration(&mut self, duration: monotonic_clock::Duration) -> wasmtime::Result<Resource<DynPollable>> {
        self.timer(duration == 0)
    }
}

/// Run `fut` to completion on this thread without a runtime, or give up:
/// poll it once with a waker that does nothing. Guest code and the host
/// functions it reaches never wait (see the module docs), so a future that
/// is not ready after one poll waits for something that will not come; it is
/// dropped (its fiber unwound, its store not used again) and `None` returned.
fn run_now<F: Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Most used stores waiting for the background thread to free them. Past
/// this a call frees its own store inline, so used pool slots cannot pile
/// up faster than they are freed.
const MAX_PENDING_RELEASES: usize = 32;

/// Ready instances kept per policy.
const READY_PER_POLICY: usize = 4;

/// A call that leaves fewer ready instances than this wakes the background
/// thread at once, so the next calls still find one.
const REFILL_BELOW: usize = 2;

/// Most jobs gathered before a call wakes the background thread.
const MAX_GATHERED: usize = 8;

/// The background thread's queue, and the jobs gathered for its next
/// wake-up (sent by a call with a full batch or a low pool, else by the
/// epoch ticker within a tick).
struct Background {
    jobs: std::sync::mpsc::Sender<Job>,
    gathered: std::sync::Mutex<Vec<Job>>,
}

impl Background {
    /// Run `job` on the background thread now (inline when the thread is
    /// gone, as the host is torn down).
    fn send(&self, job: Job) {
        if let Err(std::sync::mpsc::SendError(job)) = self.jobs.send(job) {
            job();
        }
    }

    /// Run `job` on the background thread with the next batch; `urgent`
    /// sends the batch now.
    fn gather(&self, job: Job, urgent: bool) {
        let batch = {
            let mut gathered = self.gathered.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            gathered.push(job);
            if !urgent && gathered.len() < MAX_GATHERED {
                return;
            }
            std::mem::take(&mut *gathered)
        };
        self.send_batch(batch);
    }

    /// Send whatever has been gathered.
    fn flush(&self) {
        let batch = std::mem::take(&mut *self.gathered.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        if !batch.is_empty() {
            self.send_batch(batch);
        }
    }

    fn send_batch(&self, batch: Vec<Job>) {
        self.send(Box::new(move || batch.into_iter().for_each(|job| job())));
    }
}

/// Components larger than this run on the copying engine (see [`Runtimes`]).
const COPY_IMAGE_ABOVE: usize = 4 << 20;

/// The engines and linkers shared by every policy.
#[derive(Clone)]
pub struct Host {
    runtimes: Arc<Runtimes>,
    limits: Limits,
    /// The compiled-component cache the engine uses, for its hit count.
    cache: Option<wasmtime::Cache>,
    /// Background work: refilling ready pools, freeing used stores.
    background: Arc<Background>,
    /// Used stores handed to the background thread and not yet freed.
    pending_releases: Arc<std::sync::atomic::AtomicUsize>,
    /// Instances kept warm across every policy ([`WARM_TOTAL`] at most).
    warm_total: Arc<std::sync::atomic::AtomicUsize>,
}

/// An instance in its own store: never used while in a policy's ready
/// pool; then serving one caller's calls.
struct Ready {
    store: Store<HostState>,
    instance: Instance,
    policy: bindings::Policy,
    /// Calls it has served.
    uses: u32,
}

impl Ready {
    /// Whether an instance that has just served a call without failing may
    /// be kept warm for its caller's next: it has served fewer than
    /// [`MAX_USES`] calls, grown its memory by at most [`MAX_GROWTH`] and
    /// holds at most [`MAX_KEPT_HANDLES`] WASI resources.
    fn may_serve_again(&mut self) -> bool {
        self.uses < MAX_USES && self.store.data().limits.grown <= MAX_GROWTH && self.store.data_mut().handles() <= MAX_KEPT_HANDLES
    }
}

/// Most calls one instance serves before it is freed.
pub const MAX_USES: u32 = 1000;
/// Memory growth past which an instance is freed after its call rather
/// than kept warm: a policy that leaks gets a fresh instance long before
/// its memory limit.
pub const MAX_GROWTH: usize = 16 << 20;
/// Resources (streams, pollables) an instance may still hold after its
/// call and be kept warm: a policy that leaks handles gets a fresh instance
/// rather than piling them up across calls.
pub const MAX_KEPT_HANDLES: usize = 16;
/// Resources one store may hold at once; pushing past it fails the call
/// (wasmtime's default is a million).
const MAX_HANDLES: usize = 1024;
/// Instances kept warm per policy configuration, for its most recent
/// callers. A hook runs on its worker thread without yielding, so one
/// caller holds at most as many at once as there are worker threads.
pub const WARM_PER_POLICY: usize = 8;
/// Instances kept warm across all policies: with the ready pools and the
/// calls running at once, within the pooling allocator's slots however
/// many policies are loaded.
pub const WARM_TOTAL: usize = 256;

/// One policy configuration's warm instances, each tied to the caller it
/// has served (see the module docs). A caller is named by a key the policy
/// set derives from its identity; keys are compared whole.
#[derive(Default)]
pub struct Warm {
    held: std::sync::Mutex<Vec<Held>>,
}

struct Held {
    caller: String,
    ready: Ready,
    _counted: WarmCount,
}

/// One instance counted in the host's [`WARM_TOTAL`] while it is held.
struct WarmCount(Arc<std::sync::atomic::AtomicUsize>);

impl WarmCount {
    /// Count one more, unless the host holds its most already.
    fn new(total: &Arc<std::sync::atomic::AtomicUsize>) -> Option<WarmCount> {
        use std::sync::atomic::Ordering;
        total.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < WARM_TOTAL).then_some(n + 1)).ok()?;
        Some(WarmCount(total.clone()))
    }
}

impl Drop for WarmCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Warm {
    /// The caller's most recently used instance, taken out.
    fn take(&self, caller: &str) -> Option<Ready> {
        let mut held = self.held.lock().ok()?;
        let at = held.iter().rposition(|h| h.caller == caller)?;
        Some(held.remove(at).ready)
    }

    /// Keep `ready` for `caller`, counted in `total`; what is to be freed:
    /// the least recently used instance when that makes too many here
    /// (whose count `ready` takes over), or `ready` itself when the host
    /// holds its most already.
    fn put(&self, caller: &str, ready: Ready, total: &Arc<std::sync::atomic::AtomicUsize>) -> Option<Ready> {
        let Ok(mut held) = self.held.lock() else { return Some(ready) };
        if held.len() >= WARM_PER_POLICY {
            let Held { ready: evicted, _counted, .. } = held.remove(0);
            held.push(Held { caller: caller.to_string(), ready, _counted });
            return Some(evicted);
        }
        match WarmCount::new(total) {
            Some(counted) => {
                held.push(Held { caller: caller.to_string(), ready, _counted: counted });
                None
            }
            None => Some(ready),
        }
    }

    /// Instances held now.
    pub fn len(&self) -> usize {
        self.held.lock().map(|h| h.len()).unwrap_or(0)
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Inner {
    pre: wasmtime::component::InstancePre<HostState>,
    indices: bindings::PolicyIndices,
    /// The `scope` export of a `scoped-policy` component.
    scope: Option<ComponentExportIndex>,
    /// Whether the component imports `scan` (its `on-response` wants findings).
    uses_scan: bool,
    ready: std::sync::Mutex<Vec<Ready>>,
    refilling: std::sync::atomic::AtomicBool,
    /// The policy's allowance of logged outputs, shared by every
    /// configuration of it and kept across reloads that keep it.
    output_budget: super::output::Budget,
}

/// Two engines, alike but for how an instance's memory gets its initial
/// image. Small components (Rust: a few hundred KB) are mapped copy-on-write,
/// the cheapest instantiation. Large ones (the Python and JS runtimes'
/// snapshots, 12-19 MB) touch hundreds of image pages per call, and under
/// copy-on-write each first write is a page fault with a TLB shootdown
/// across the gateway's threads, most of a Python hook's time; the copying
/// engine writes the image into memory that stays resident between
/// instances at instantiation (on the background thread), so the call runs
/// without faults: Python hooks go from ~1.5 ms to ~0.2 ms.
struct Runtimes {
    cow: Runtime,
    copy: Runtime,
}

struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
}

impl Runtimes {
    /// The runtime for a component of `size` bytes.
    fn for_size(&self, size: usize) -> &Runtime {
        if size > COPY_IMAGE_ABOVE { &self.copy } else { &self.cow }
    }
}

impl Host {
    /// Create the engines ([`Runtimes`]) and start their epoch ticker. The
    /// ticker thread holds only a weak reference and ends when the last
    /// host clone is dropped. `cache`: where compiled components are kept
    /// between runs (see [`super::cache`]).
    pub fn new(limits: Limits, cache: Option<wasmtime::Cache>) -> anyhow::Result<Host> {
        let runtimes = Arc::new(Runtimes { cow: Runtime::new(limits, &cache, true)?, copy: Runtime::new(limits, &cache, false)? });
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new().name("veil-policy-pool".into()).spawn(move || {
            while let Ok(job) = rx.recv() {
                job();
            }
        })?;
        let background = Arc::new(Background { jobs, gathered: Default::default() });
        let (weak, weak_background) = (Arc::downgrade(&runtimes), Arc::downgrade(&background));
        std::thread::Builder::new().name("veil-epoch".into()).spawn(move || loop {
            std::thread::sleep(EPOCH_TICK);
            match (weak.upgrade(), weak_background.upgrade()) {
                (Some(r), Some(background)) => {
                    r.cow.engine.increment_epoch();
                    r.copy.engine.increment_epoch();
                    background.flush();
                }
                _ => break,
            }
        })?;
        Ok(Host { runtimes, limits, cache, background, pending_releases: Default::default(), warm_total: Default::default() })
    }

    /// The limits applied to every call.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Read, compile and check a policy file.
    pub fn load(&self, path: &Path) -> Result<Compiled, LoadError> {
        let size = std::fs::metadata(path)
            .map_err(|source| LoadError::Read { path: path.into(), source })?
            .len();
        if size > MAX_POLICY_FILE {
            return Err(LoadError::TooLarge { path: path.into(), size });
        }
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read { path: path.into(), source })?;
        self.compile(path, &bytes)
    }

    /// Compile and check a policy from bytes; `path` names it in errors.
    pub fn compile(&self, path: &Path, bytes: &[u8]) -> Result<Compiled, LoadError> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        if wasmparser_is_core_module(bytes) {
            return Err(LoadError::NotAComponent {
                path: path.into(),
                reason: "this is a core WebAssembly module; policies must be components (build for wasm32-wasip2, or wrap with `wasm-tools component new`)".into(),
            });
        }
        let hits = self.cache.as_ref().map(wasmtime::Cache::cache_hits);
        let runtime = self.runtimes.for_size(bytes.len());
        let component = Component::from_binary(&runtime.engine, bytes).map_err(|e| LoadError::NotAComponent {
            path: path.into(),
            reason: format!("{e:#}"),
        })?;
        // Loads are not concurrent (one reload task; the CLI loads in turn),
        // so a hit counted meanwhile is this component's.
        let from_cache = hits.is_some() && hits != self.cache.as_ref().map(wasmtime::Cache::cache_hits);
        let pre = runtime.linker.instantiate_pre(&component).map_err(|e| LoadError::WrongWorld {
            path: path.into(),
            reason: format!("{e:#}"),
        })?;
        // The exports' indices, looked up by name once here rather than per
        // instance; an export missing or of the wrong type is a wrong world.
        let indices = bindings::PolicyIndices::new(&pre).map_err(|e| LoadError::WrongWorld {
            path: path.into(),
            reason: format!("{e:#}"),
        })?;
        let scope = component.get_export_index(None, "scope");
        let uses_scan = component.component_type().imports(&runtime.engine).any(|(name, _)| name.starts_with("veil:policy/scan@"));
        let mut compiled = Compiled {
            host: self.clone(),
            inner: Arc::new(Inner { pre, indices, scope, uses_scan, ready: Default::default(), refilling: Default::default(), output_budget: Default::default() }),
            name: String::new(),
            version: String::new(),
            sha256,
            path: path.into(),
            from_cache,
        };
        let info = compiled
            .with_instance(self.limits.deadline, None, async |p, s, _| p.call_info(s).await)
            .explained()
            .map_err(|reason| LoadError::Info { path: path.into(), reason })?;
        if !valid_name(&info.name) || info.version.is_empty() || info.version.len() > 64 {
            return Err(LoadError::Info {
                path: path.into(),
                reason: format!(
                    "name must be 1-64 characters of [a-z0-9._-] and version 1-64 characters, got {:?} {:?}",
                    truncate(&info.name, 80),
                    truncate(&info.version, 80)
                ),
            });
        }
        compiled.name = info.name;
        compiled.version = info.version;
        if let Some(index) = &compiled.inner.scope {
            compiled
                .with_instance(self.limits.deadline, None, async |_, s, instance| instance.get_typed_func::<(&str,), (wit::Scope,)>(s, index).map(drop))
                .explained()
                .map_err(|reason| LoadError::WrongScope { path: path.into(), reason })?;
        }
        compiled.refill();
        Ok(compiled)
    }

    fn new_store(&self, engine: &Engine) -> Store<HostState> {
        // stdout and stderr: one bounded sink; stdin: the builder's default,
        // empty and closed.
        let output = OutputSink::default();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HANDLES);
        let state = HostState {
            wasi: WasiCtx::builder().stdout(output.clone()).stderr(output.clone()).build(),
            table,
            limits: Limiter {
                limits: StoreLimitsBuilder::new()
                    .memory_size(self.limits.memory_bytes)
                    .instances(64)
                    .tables(64)
                    .memories(8)
                    .trap_on_grow_failure(true)
                    .build(),
                grown: 0,
            },
            findings: None,
            output,
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limits);
        store
    }

    /// The deadline of a call whose inputs carry `body_bytes` of response.
    fn deadline(&self, body_bytes: usize) -> Duration {
        let extra = self.limits.deadline_per_mib.as_nanos() * body_bytes as u128 / (1 << 20);
        self.limits.deadline + Duration::from_nanos(u64::try_from(extra).unwrap_or(u64::MAX))
    }

    fn ticks(deadline: Duration) -> u64 {
        (deadline.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64
    }

    /// Free a used store (its instance's pool slot is reset: the dirty
    /// pages of its memory rewritten) on the background thread, off the
    /// request path; inline when too many are already waiting. Nothing
    /// reuses the slot before it is reset, so no state crosses callers.
    /// `then` runs after it, on the same thread. Both wait for the next
    /// batch unless `urgent`.
    fn release(&self, store: Store<HostState>, then: Option<Job>, urgent: bool) {
        use std::sync::atomic::Ordering;
        let job: Job = if self.pending_releases.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING_RELEASES {
            self.pending_releases.fetch_sub(1, Ordering::AcqRel);
            drop(store);
            match then {
                Some(then) => then,
                None => return,
            }
        } else {
            let pending = self.pending_releases.clone();
            Box::new(move || {
                drop(store);
                pending.fetch_sub(1, Ordering::AcqRel);
                if let Some(then) = then {
                    then();
                }
            })
        };
        self.background.gather(job, urgent);
    }

    /// A fresh instance in its own store; on failure, why and what its
    /// start-up printed.
    fn instantiate(&self, inner: &Inner) -> Result<Ready, (HookError, Option<Printed>)> {
        let pre = &inner.pre;
        let mut store = self.new_store(pre.engine());
        let deadline = self.limits.deadline.max(INSTANTIATE_DEADLINE);
        store.set_epoch_deadline(Self::ticks(deadline));
        let started = Instant::now();
        let made = run_now(async {
            let instance = pre.instantiate_async(&mut store).await?;
            let policy = inner.indices.load(&mut store, &instance)?;
            Ok::<_, wasmtime::Error>((instance, policy))
        });
        let error = match made {
            Some(Ok((instance, policy))) => return Ok(Ready { store, instance, policy, uses: 0 }),
            Some(Err(e)) => match classify_trap(e, deadline, self.limits.memory_bytes, started) {
                HookError::Trap(m) => HookError::Instantiate(m),
                other => other,
            },
            None => HookError::Blocked,
        };
        Err((error, store.data().output.take()))
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
}

/// Cut `s` to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A core module starts with the same magic as a component but a different
/// version/layer field: tell them apart to give a useful error.
fn wasmparser_is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0]
}

/// A compiled, checked policy component (clones share the compiled code).
#[derive(Clone)]
pub struct Compiled {
    host: Host,
    inner: Arc<Inner>,
    /// Name from the policy's `info` export.
    pub name: String,
    /// Version from the policy's `info` export.
    pub version: String,
    /// sha256 of the file, hex.
    pub sha256: String,
    /// Where it was loaded from.
    pub path: PathBuf,
    /// Whether its compiled code came from the cache rather than Cranelift.
    pub from_cache: bool,
}

impl Compiled {
    /// Run `f` with the host's limits, driven by [`run_now`], on the
    /// caller's warm instance when `warm` holds one, else on a fresh,
    /// never-used one; what the guest printed comes with the result. With
    /// `warm`, an instance whose call succeeded is kept there for the same
    /// caller (see the module docs); every other instance is freed.
    fn with_instance<R>(
        &self,
        deadline: Duration,
        warm: Option<(&Warm, &str)>,
        f: impl AsyncFnOnce(&bindings::Policy, &mut Store<HostState>, &Instance) -> wasmtime::Result<R>,
    ) -> Hooked<R> {
        let reused = warm.and_then(|(w, caller)| w.take(caller));
        // A fresh instance leaves the ready pool one short: top it up, now
        // when it runs low.
        let (ready, refill) = match reused {
            Some(r) => (r, None),
            None => {
                let (ready, left) = match self.inner.ready.lock() {
                    Ok(mut r) => (r.pop(), r.len()),
                    Err(_) => (None, 0),
                };
                let ready = match ready {
                    Some(r) => r,
                    None => match self.host.instantiate(&self.inner) {
                        Ok(r) => r,
                        Err((e, printed)) => return Hooked { result: Err(e), printed },
                    },
                };
                (ready, Some(left < REFILL_BELOW))
            }
        };
        let Ready { mut store, instance, policy, uses } = ready;
        // What the instance printed while it started, or in an earlier
        // call, belongs to no call of this one.
        store.data().output.clear();
        // The deadline counts from now, not from when the instance was made.
        store.set_epoch_deadline(Host::ticks(deadline));
        let started = Instant::now();
        let result = match run_now(f(&policy, &mut store, &instance)) {
            Some(r) => r.map_err(|e| classify_trap(e, deadline, self.host.limits.memory_bytes, started)),
            None => Err(HookError::Blocked),
        };
        let printed = store.data().output.take();
        let uses = uses + 1;
        let (urgent, refill) = match refill {
            Some(urgent) => (urgent, self.refill_job()),
            None => (false, None),
        };
        let mut ready = Ready { store, instance, policy, uses };
        let free = match warm {
            Some((w, caller)) if result.is_ok() && ready.may_serve_again() => w.put(caller, ready, &self.host.warm_total).map(|r| r.store),
            _ => Some(ready.store),
        };
        // One background job frees a store and tops up the pool; it waits
        // for the next batch unless the pool runs low.
        match (free, refill) {
            (Some(store), refill) => self.host.release(store, refill, urgent),
            (None, Some(refill)) => self.host.background.gather(refill, urgent),
            (None, None) => {}
        }
        Hooked { result, printed }
    }

    /// Instantiate a fresh instance inline: what the background thread pays
    /// per call, and a call when the ready pool is empty (benchmarks time it;
    /// dropping the result frees the instance).
    pub fn instantiate_inline(&self) -> Result<impl Drop, HookError> {
        self.host.instantiate(&self.inner).map(|r| r.store).map_err(|(e, _)| e)
    }

    /// Top up the ready pool inline, now (benchmarks use it to time a hook
    /// that finds an instance waiting, as it does below saturation).
    pub fn fill_ready(&self) -> Result<(), HookError> {
        top_up(&self.host, &self.inner)
    }

    /// Ask the background thread to top up the ready pool.
    fn refill(&self) {
        if let Some(job) = self.refill_job() {
            self.host.background.send(job);
        }
    }

    /// The job that tops up the ready pool; `None` while one is under way.
    fn refill_job(&self) -> Option<Job> {
        use std::sync::atomic::Ordering;
        if self.inner.refilling.swap(true, Ordering::AcqRel) {
            return None;
        }
        let inner = self.inner.clone();
        let host = self.host.clone();
        Some(Box::new(move || {
            if let Err(e) = top_up(&host, &inner) {
                tracing::debug!(error = %e, "could not pre-instantiate a policy");
            }
            inner.refilling.store(false, Ordering::Release);
        }))
    }

    /// Run `on-request` for `caller` on its instance in `warm` (see
    /// [`Compiled::with_instance`]).
    pub fn on_request(&self, warm: &Warm, caller: &str, call: &wit::Call) -> Hooked<wit::Verdict> {
        self.with_instance(self.host.deadline(0), Some((warm, caller)), async |p, s, _| p.call_on_request(s, call).await)
    }

    /// How much of what this policy prints may still be logged now.
    pub fn output_budget(&self) -> &super::output::Budget {
        &self.inner.output_budget
    }

    /// Whether the policy calls the detectors (`scan.findings`).
    pub fn uses_scan(&self) -> bool {
        self.inner.uses_scan
    }

    /// Run `on-response` for `caller` on its instance in `warm`, its
    /// deadline extended in proportion to the response body; `findings`
    /// answers `scan.findings`.
    pub fn on_response(&self, warm: &Warm, caller: &str, call: &wit::Call, resp: &wit::Response, findings: Option<Findings>) -> Hooked<wit::ResponseVerdict> {
        self.with_instance(self.host.deadline(resp.body_json.len()), Some((warm, caller)), async |p, s, _| {
            s.data_mut().findings = findings;
            let verdict = p.call_on_response(&mut *s, call, resp).await;
            s.data_mut().findings = None;
            verdict
        })
    }

    /// Run `scope` with `config_json` on a fresh instance; `None` for a
    /// component of the plain `policy` world (its hooks see every call).
    pub fn scope(&self, config_json: &str) -> Hooked<Option<wit::Scope>> {
        let Some(index) = &self.inner.scope else { return Hooked { result: Ok(None), printed: None } };
        self.with_instance(self.host.deadline(0), None, async |_, s, instance| {
            let scope = instance.get_typed_func::<(&str,), (wit::Scope,)>(&mut *s, index)?;
            let (result,) = scope.call_async(&mut *s, (config_json,)).await?;
            Ok(Some(result))
        })
    }
}

impl Runtime {
    /// An engine (pooling allocator, epoch interruption) and its linker;
    /// `cow`: map memory images copy-on-write rather than copy them.
    fn new(limits: Limits, cache: &Option<wasmtime::Cache>, cow: bool) -> anyhow::Result<Runtime> {
        let mut pool = PoolingAllocationConfig::default();
        // Slots for concurrent calls plus the ready pools of many policies.
        let n = limits.max_concurrent.max(1) + 512;
        pool.total_component_instances(n)
            .total_core_instances(n * 8)
            .total_memories(n * 2)
            .total_tables(n * 8)
            .total_stacks(n)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .max_component_instance_size(1 << 20)
            .max_core_instance_size(4 << 20)
            .max_memory_size(limits.memory_bytes)
            // Reset used slots by rewriting only their dirty pages (pagemap
            // scan) instead of unmapping them: the next instance then runs
            // without page faults. This is most of the per-call cost. The
            // copying engine keeps a whole runtime snapshot resident.
            .linear_memory_keep_resident(if cow { 4 << 20 } else { 64 << 20 })
            .table_keep_resident(64 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .memory_init_cow(cow)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            // Reserve only what the memory limit allows plus a guard, so a
            // large pool does not reserve terabytes of address space.
            .memory_reservation(limits.memory_bytes as u64)
            .memory_guard_size(64 << 10)
            .max_wasm_stack(1 << 20)
            .cache(cache.clone());
        config.enable_incremental_compilation(Arc::new(super::cache::FunctionCache::default()))?;
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        // WASI only as far as guest toolchains need it: the context below has
        // no preopened directories, no network, no environment, no arguments.
        // Its async form, driven by `run_now` (see the module docs), with the
        // monotonic clock's timers replaced by ones that need no runtime.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        linker.allow_shadowing(true);
        monotonic_clock::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        linker.allow_shadowing(false);
        wit_scan::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        Ok(Runtime { engine, linker })
    }
}

/// Instantiate until the policy has its ready instances.
fn top_up(host: &Host, inner: &Inner) -> Result<(), HookError> {
    loop {
        let have = inner.ready.lock().map(|r| r.len()).unwrap_or(READY_PER_POLICY);
        if have >= READY_PER_POLICY {
            return Ok(());
        }
        let r = host.instantiate(inner).map_err(|(e, _)| e)?;
        if let Ok(mut ready) = inner.ready.lock() {
            ready.push(r);
        }
    }
}

fn classify_trap(e: wasmtime::Error, deadline: Duration, memory_bytes: usize, started: Instant) -> HookError {
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => HookError::Timeout(deadline.as_millis()),
        _ => {
            let text = format!("{e:#}");
            // A failed memory.grow traps (trap_on_grow_failure); so does an
            // allocator's abort when its grow fails: both are the memory cap.
            if text.contains("forcing trap when growing memory")
                || text.contains("memory allocation of")
                || text.contains("capacity overflow")
            {
                HookError::Memory(memory_bytes >> 20)
            } else if started.elapsed() >= deadline && text.contains("interrupt") {
                HookError::Timeout(deadline.as_millis())
            } else {
                // The trap itself (`wasm \`unreachable\` instruction
                // executed`, `call stack exhausted`) or the host's error,
                // without the wasm backtrace: the reason a caller reads
                // quotes what the guest printed instead (its panic message).
                let cause = match e.downcast_ref::<wasmtime::Trap>() {
                    Some(trap) => trap.to_string(),
                    None => e.root_cause().to_string(),
                };
                HookError::Trap(truncate(&cause, 512).to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A background queue without a thread: what was sent is read from `rx`.
    fn queue() -> (Background, mpsc::Receiver<Job>) {
        let (jobs, rx) = mpsc::channel();
        (Background { jobs, gathered: Default::default() }, rx)
    }

    fn sent(rx: &mpsc::Receiver<Job>) -> usize {
        rx.try_iter().map(|batch| batch()).count()
    }

    #[test]
    fn gathered_jobs_go_in_one_batch_when_full_urgent_or_flushed() {
        let (background, rx) = queue();
        let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
        let job = |n: usize| -> Job {
            let ran = ran.clone();
            Box::new(move || ran.lock().unwrap().push(n))
        };
        for n in 0..MAX_GATHERED - 1 {
            background.gather(job(n), false);
        }
        assert_eq!(sent(&rx), 0, "a partial batch waits");
        background.gather(job(MAX_GATHERED - 1), false);
        assert_eq!(sent(&rx), 1, "a full batch is one wake-up");
        assert_eq!(*ran.lock().unwrap(), (0..MAX_GATHERED).collect::<Vec<_>>(), "in order");
        background.gather(job(100), false);
        background.gather(job(101), true);
        assert_eq!(sent(&rx), 1, "an urgent job sends the batch");
        background.flush();
        assert_eq!(sent(&rx), 0, "nothing left to flush");
        background.gather(job(102), false);
        background.flush();
        assert_eq!(sent(&rx), 1);
        assert_eq!(ran.lock().unwrap()[MAX_GATHERED..], [100, 101, 102]);
    }

    #[test]
    fn the_ticker_sends_what_calls_left_gathered() {
        let host = Host::new(Limits::default(), None).unwrap();
        let (tx, rx) = mpsc::channel();
        host.background.gather(Box::new(move || tx.send(()).unwrap()), false);
        // Liveness, not speed: the ticker flushes within a tick.
        rx.recv_timeout(Duration::from_secs(10)).expect("a gathered job runs without further calls");
    }
}
