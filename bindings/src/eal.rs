//! EAL initialisation: once per process, from switchyard's options.

use crate::error::{rte_errno, strerror, Error, Result};
use crate::sys;
use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What switchyard tells EAL. `Default` gives a private, quiet EAL with no
/// PCI devices, hugepages when the machine has free ones, and one lcore.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EalOptions {
    /// `--file-prefix`; default `switchyard-<pid>`, so that processes never
    /// share EAL runtime state.
    pub file_prefix: Option<String>,
    /// `--no-huge`. `None` = auto: on when no hugetlbfs is mounted or no
    /// hugepage is free (see [`hugepages_available`]).
    pub no_huge: Option<bool>,
    /// `--vdev` devargs probed at init, e.g. `net_ring0` or
    /// `net_pcap0,rx_pcap=in.pcap,tx_pcap=out.pcap`. Vdevs can also be added
    /// later with [`crate::ethdev::EthDev::probe`].
    pub vdevs: Vec<String>,
    /// `-a` (PCI allow list), e.g. `0000:3b:02.1`. When empty EAL gets
    /// `--no-pci` and no PCI device is touched.
    pub allow_pci: Vec<String>,
    /// `--lcores`. Default `0@<first CPU this thread may run on>`: EAL's
    /// lcore threads are not used; switchyard runs and pins its own workers.
    pub lcores: Option<String>,
    /// `-m` in MiB. Default: 256 under `--no-huge`, EAL's own otherwise.
    pub memory_mb: Option<u32>,
    /// `--log-level`; default `warning`.
    pub log_level: Option<String>,
    /// Extra driver plugin files or directories (`-d`). EAL already loads
    /// its built-in plugin directory ([`pmd_path`]).
    pub driver_paths: Vec<PathBuf>,
    /// Anything else, passed verbatim after the arguments above (not
    /// `--mbuf-pool-ops-name`: [`crate::Mempool`]'s sharing between threads
    /// needs the default multi-producer ring ops).
    pub extra_args: Vec<String>,
}

impl EalOptions {
    /// The argv (without argv\[0\]) these options give, with the defaults
    /// resolved against this machine.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        let no_huge = self.no_huge.unwrap_or_else(|| !hugepages_available());
        let prefix = self.file_prefix.clone().unwrap_or_else(|| format!("switchyard-{}", std::process::id()));
        a.push(format!("--file-prefix={prefix}"));
        if no_huge {
            // --in-memory implies --legacy-mem semantics that --no-huge
            // rejects, so keep the runtime private with --no-shconf instead.
            a.push("--no-huge".into());
            a.push("--no-shconf".into());
            a.push(format!("-m{}", self.memory_mb.unwrap_or(256)));
        } else {
            a.push("--in-memory".into());
            if let Some(m) = self.memory_mb {
                a.push(format!("-m{m}"));
            }
        }
        a.push("--no-telemetry".into());
        let lcores = self.lcores.clone().unwrap_or_else(|| format!("0@{}", first_allowed_cpu()));
        a.push(format!("--lcores={lcores}"));
        a.push(format!("--log-level={}", self.log_level.as_deref().unwrap_or("warning")));
        if self.allow_pci.is_empty() {
            a.push("--no-pci".into());
        }
        for dev in &self.allow_pci {
            a.push(format!("--allow={dev}"));
        }
        for dev in &self.vdevs {
            a.push(format!("--vdev={dev}"));
        }
        for d in &self.driver_paths {
            a.push(format!("-d{}", d.display()));
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }
}

/// Proof that EAL is up in this process; needed to create pools and ports.
#[derive(Debug)]
pub struct Eal {
    options: EalOptions,
    args: Vec<String>,
}

/// What the first `Eal::init` of the process did.
static EAL: Mutex<Option<InitOutcome>> = Mutex::new(None);

#[derive(Debug)]
enum InitOutcome {
    Up(&'static Eal),
    Failed(Box<(EalOptions, Error)>),
}

impl Eal {
    /// Initialises EAL with `options`, or returns the EAL that an earlier call
    /// with the same options brought up (so the tests of one process share
    /// it). `rte_eal_init` runs at most once per process: a call with other
    /// options gets [`Error::EalOptionsDiffer`], and after a failed init the
    /// same error comes back again.
    pub fn init(options: EalOptions) -> Result<&'static Eal> {
        let mut state = EAL.lock().unwrap_or_else(|e| e.into_inner());
        match &*state {
            Some(InitOutcome::Up(eal)) if eal.options == options => return Ok(eal),
            Some(InitOutcome::Failed(f)) if f.0 == options => return Err(f.1.clone()),
            Some(InitOutcome::Up(eal)) => {
                return Err(Error::EalOptionsDiffer {
                    first: format!("{:?}", eal.options),
                    requested: format!("{options:?}"),
                })
            }
            Some(InitOutcome::Failed(f)) => {
                return Err(Error::EalOptionsDiffer {
                    first: format!("{:?} (failed)", f.0),
                    requested: format!("{options:?}"),
                })
            }
            None => {}
        }
        let outcome = match init_once(&options) {
            Ok(args) => InitOutcome::Up(Box::leak(Box::new(Eal { options, args }))),
            Err(e) => InitOutcome::Failed(Box::new((options, e))),
        };
        let result = match &outcome {
            InitOutcome::Up(eal) => Ok(*eal),
            InitOutcome::Failed(f) => Err(f.1.clone()),
        };
        *state = Some(outcome);
        result
    }

    /// The EAL of this process, when [`Eal::init`] succeeded earlier.
    pub fn get() -> Option<&'static Eal> {
        match &*EAL.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(InitOutcome::Up(eal)) => Some(eal),
            _ => None,
        }
    }

    /// The options EAL was brought up with.
    pub fn options(&self) -> &EalOptions {
        &self.options
    }

    /// The arguments `rte_eal_init` got (without argv\[0\]).
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Gives the calling (non-EAL) thread an lcore id, so that mempool
    /// per-lcore caches serve it; call once on each worker thread. Fails
    /// when no lcore id is left.
    pub fn register_thread(&self) -> Result<u32> {
        // SAFETY: EAL is initialised (self exists); rte_thread_register only
        // touches the calling thread's EAL state.
        let ret = unsafe { sys::rte_thread_register() };
        if ret < 0 {
            let errno = rte_errno();
            return Err(Error::EalInit {
                args: "rte_thread_register".into(),
                errno,
                message: strerror(errno),
            });
        }
        Ok(lcore_id())
    }

    /// Releases the lcore id of a thread registered with [`Eal::register_thread`].
    pub fn unregister_thread(&self) {
        // SAFETY: harmless on a thread that is not registered; EAL is up.
        unsafe { sys::rte_thread_unregister() }
    }
}

/// The lcore id of a thread that is not an EAL thread (DPDK's `LCORE_ID_ANY`).
pub const LCORE_ID_ANY: u32 = u32::MAX;

/// The calling thread's lcore id ([`LCORE_ID_ANY`]: not an EAL thread).
pub fn lcore_id() -> u32 {
    // SAFETY: reads a thread-local value.
    unsafe { sys::shim::sy_rte_lcore_id() }
}

/// DPDK's version string, e.g. `DPDK 22.11.11`.
pub fn version() -> String {
    // SAFETY: rte_version returns a pointer to a static, NUL-terminated string that lives as
    // long as the library.
    unsafe { CStr::from_ptr(sys::rte_version()) }.to_string_lossy().into_owned()
}

/// The directory EAL loads driver plugins (net_ring, net_pcap, mempool_ring,
/// ...) from when DPDK is linked dynamically (Debian:
/// `/usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0`).
pub fn pmd_path() -> PathBuf {
    // SAFETY: the shim returns a pointer to a string literal.
    let s = unsafe { CStr::from_ptr(sys::shim::sy_pmd_path()) };
    PathBuf::from(s.to_string_lossy().into_owned())
}

/// Whether a hugetlbfs is mounted and at least one hugepage is free.
pub fn hugepages_available() -> bool {
    let mounted = std::fs::read_to_string("/proc/mounts")
        .map(|m| m.lines().any(|l| l.split_whitespace().nth(2) == Some("hugetlbfs")))
        .unwrap_or(false);
    if !mounted {
        return false;
    }
    let Ok(dir) = std::fs::read_dir("/sys/kernel/mm/hugepages") else {
        return false;
    };
    dir.flatten().any(|e| {
        std::fs::read_to_string(e.path().join("free_hugepages"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
    })
}

fn first_allowed_cpu() -> usize {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid cpu_set_t of the size we pass; pid 0 = this thread.
    let ok = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } == 0;
    if ok {
        for cpu in 0..libc::CPU_SETSIZE as usize {
            // SAFETY: cpu < CPU_SETSIZE and set is initialised.
            if unsafe { libc::CPU_ISSET(cpu, &set) } {
                return cpu;
            }
        }
    }
    0
}

fn init_once(options: &EalOptions) -> Result<Vec<String>> {
    let args = options.to_args();
    let shown = args.join(" ");
    let mut argv_c = Vec::with_capacity(args.len() + 1);
    for a in std::iter::once("switchyard").chain(args.iter().map(String::as_str)) {
        let c = CString::new(a).map_err(|_| Error::InvalidArgument {
            what: "EAL argument".into(),
            reason: format!("{a:?} contains a NUL byte"),
        })?;
        argv_c.push(c);
    }
    // EAL keeps pointers into argv (and permutes it), so argv and its
    // strings live for the rest of the process: leak them, once.
    let strings: &'static mut [CString] = Box::leak(argv_c.into_boxed_slice());
    let argv: &'static mut [*mut c_char] = Box::leak(
        strings
            .iter()
            .map(|c| c.as_ptr() as *mut c_char)
            .chain(std::iter::once(std::ptr::null_mut()))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    let argc = (argv.len() - 1) as i32;

    // EAL pins the calling thread to the main lcore's CPU. switchyard pins
    // its own workers, so give the caller its affinity back afterwards.
    // SAFETY: zeroed cpu_set_t is a valid empty set.
    let mut saved: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: saved is a valid cpu_set_t of the size we pass.
    let have_saved = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&saved), &mut saved) } == 0;

    // SAFETY: argv is a NULL-terminated array of argc valid NUL-terminated
    // strings that live forever (leaked above); the mutex held by our
    // caller and the outcome it records ensure rte_eal_init runs at most
    // once per process.
    let ret = unsafe { sys::rte_eal_init(argc, argv.as_mut_ptr()) };
    if ret < 0 {
        let errno = rte_errno();
        return Err(Error::EalInit { args: shown, errno, message: strerror(errno) });
    }
    if have_saved {
        // SAFETY: saved was filled by sched_getaffinity above.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&saved), &saved) };
    }
    remove_empty_runtime_dir();
    Ok(args)
}

/// With `--no-shconf`/`--in-memory` and no telemetry, EAL still creates an
/// empty `/var/run/dpdk/<prefix>`; remove it so test runs leave nothing.
fn remove_empty_runtime_dir() {
    // SAFETY: EAL is initialised; the pointer is to a static buffer.
    let p = unsafe { sys::rte_eal_get_runtime_dir() };
    if p.is_null() {
        return;
    }
    // SAFETY: non-null, NUL-terminated.
    let dir = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    let dir = Path::new(&dir);
    if dir.read_dir().map(|mut d| d.next().is_none()).unwrap_or(false) {
        let _ = std::fs::remove_dir(dir);
    }
}
