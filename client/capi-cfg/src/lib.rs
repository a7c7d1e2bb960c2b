//! `libcfg.so.7`: Corosync's node-level cfg C API (`corosync/cfg.h`) mapped onto
//! ringcast, as a drop-in for Debian's libcfg (programs such as corosync-cpgtool and
//! pacemaker open it next to CPG). docs/c-api.md lists what each call means here:
//!
//! - node addresses come from the engine's nodelist, node and link status from the
//!   current ring (a node is reachable and its one link connected while it is a member);
//! - shutdown tracking: `corosync_cfg_try_shutdown` asks the engine to leave (SIGTERM,
//!   as its service manager would), and every tracking handle whose engine goes away
//!   gets the shutdown callback once (flag IMMEDIATE: ringcast has no veto round);
//! - `kill_node`, `reload_config` and `reopen_log_files` have no ringcast meaning:
//!   `CS_ERR_NOT_SUPPORTED`.

#![deny(unsafe_op_in_unsafe_fn)]

#[macro_use]
#[path = "../../capi-cpg/src/ffi.rs"]
mod ffi;

use std::ffi::{CString, c_char, c_void};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::raw::{c_int, c_uint};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ffi::*;
use ringcast::{ConnectOptions, Cpg, Dispatch, Handler, Status};

const CS_ERR_ACCESS: c_int = 11;
const SHUTDOWN_FLAG_IMMEDIATE: c_int = 2;
const NODE_STATUS_V1: c_int = 1;
const MAX_HOST_LEN: usize = 256;
const MAX_LINKS: usize = 8;

type ShutdownFn = unsafe extern "C-unwind" fn(u64, c_int);

#[repr(C)]
pub struct CfgCallbacks {
    shutdown: Option<ShutdownFn>,
}

#[repr(C)]
pub struct NodeAddress {
    address_length: c_int,
    address: [u8; std::mem::size_of::<libc::sockaddr_in6>()],
}

#[repr(C)]
pub struct LinkStatusV1 {
    enabled: u8,
    connected: u8,
    dynconnected: u8,
    mtu: c_uint,
    src_ipaddr: [u8; MAX_HOST_LEN],
    dst_ipaddr: [u8; MAX_HOST_LEN],
}

#[repr(C)]
pub struct NodeStatusV1 {
    version: c_int,
    nodeid: c_uint,
    reachable: u8,
    remote: u8,
    external: u8,
    onwire_min: u8,
    onwire_max: u8,
    onwire_ver: u8,
    link_status: [LinkStatusV1; MAX_LINKS],
}

/// Node id and address of each configured node.
type NodeAddrs = Vec<(u32, SocketAddr)>;

struct Handle {
    id: u64,
    cpg: Cpg,
    shutdown: Option<ShutdownFn>,
    tracking: AtomicBool,
    /// The shutdown callback ran (once per handle).
    shutdown_told: AtomicBool,
    lost: AtomicBool,
}

static HANDLES: ffi::Table<Handle> = ffi::Table::new();

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(code) => return code,
        }
    };
}

fn live(h: u64) -> Result<Arc<Handle>, c_int> {
    let handle = HANDLES.get(h).ok_or(CS_ERR_BAD_HANDLE)?;
    if handle.lost.load(Ordering::Acquire) {
        return Err(CS_ERR_LIBRARY);
    }
    Ok(handle)
}

impl Handle {
    fn fail(&self, e: &ringcast::Error) -> c_int {
        let code = status(e);
        if code == CS_ERR_LIBRARY {
            self.lost.store(true, Ordering::Release);
        }
        code
    }

    /// The nodelist and the current ring.
    fn nodes(&self) -> Result<(NodeAddrs, Vec<u32>), c_int> {
        let listed = self.cpg.nodes().map_err(|e| self.fail(&e))?;
        let ring = listed.ring;
        let nodes = listed
            .nodes
            .into_iter()
            .filter_map(|(id, addr)| Some((id, addr.parse().ok()?)))
            .collect();
        Ok((nodes, ring))
    }
}

/// # Safety
/// C caller: `out` NULL or valid for writing.
unsafe fn put<T>(out: *mut T, value: T) -> c_int {
    if out.is_null() {
        return CS_ERR_INVALID_PARAM;
    }
    // SAFETY: non-NULL and valid for writing (the C contract).
    unsafe { out.write(value) };
    CS_OK
}

/// # Safety
/// C caller: `handle` valid for writing; `callbacks` NULL or a corosync_cfg_callbacks_t.
unsafe extern "C-unwind" fn initialize(handle: *mut u64, callbacks: *const CfgCallbacks) -> c_int {
    guard(|| {
        if handle.is_null() {
            return CS_ERR_INVALID_PARAM;
        }
        // SAFETY: NULL or a valid corosync_cfg_callbacks_t (the C contract).
        let shutdown = unsafe { callbacks.as_ref() }.and_then(|c| c.shutdown);
        let cpg = match Cpg::connect(&ConnectOptions::default()) {
            Ok(cpg) => cpg,
            Err(e) => return status(&e),
        };
        let id = HANDLES.insert(|id| Handle {
            id,
            cpg,
            shutdown,
            tracking: AtomicBool::new(false),
            shutdown_told: AtomicBool::new(false),
            lost: AtomicBool::new(false),
        });
        // SAFETY: checked non-NULL; valid for writing (the C contract).
        unsafe { put(handle, id) }
    })
}

extern "C-unwind" fn finalize(h: u64) -> c_int {
    guard(|| {
        let Some(handle) = HANDLES.remove(h) else {
            return CS_ERR_BAD_HANDLE;
        };
        let lost = handle.lost.load(Ordering::Acquire);
        match handle.cpg.finalize() {
            Ok(()) if !lost => CS_OK,
            Ok(()) => CS_ERR_LIBRARY,
            Err(e) => status(&e),
        }
    })
}

/// # Safety
/// C caller: `fd` NULL or valid for writing.
unsafe extern "C-unwind" fn fd_get(h: u64, fd: *mut i32) -> c_int {
    guard(|| {
        let handle = tri!(HANDLES.get(h).ok_or(CS_ERR_BAD_HANDLE));
        // SAFETY: NULL or valid for writing (the C contract).
        unsafe { put(fd, handle.cpg.as_raw_fd()) }
    })
}

/// The cfg API has no callbacks for the engine's events (ring changes): they are
/// consumed. The shutdown callback runs when the engine is gone.
struct Ignore;
impl Handler for Ignore {}

/// Tells a tracking handle, once, that the engine went away.
fn tell_shutdown(handle: &Handle) {
    if handle.tracking.load(Ordering::Acquire)
        && !handle.shutdown_told.swap(true, Ordering::AcqRel)
        && let Some(f) = handle.shutdown
    {
        // SAFETY: the program's callback, called as cfg.h declares it.
        unsafe { f(handle.id, SHUTDOWN_FLAG_IMMEDIATE) };
    }
}

/// One non-blocking step; `Ok(true)` when an event was handled.
fn dispatch_step(h: u64, handle: &Handle) -> Result<bool, c_int> {
    let r = handle.cpg.dispatch(Dispatch::OneNonBlocking, &mut Ignore);
    if HANDLES.get(h).is_none() {
        return Err(CS_ERR_BAD_HANDLE);
    }
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.is_try_again() || e.status() == Status::Busy => Ok(false),
        Err(e) => Err(handle.fail(&e)),
    }
}

/// `corosync_cfg_dispatch`, with the dispatch modes of docs/cpg.md §4
/// ([`ffi::dispatch_loop`]). A tracking handle whose engine went away gets the
/// shutdown callback first.
extern "C-unwind" fn dispatch(h: u64, flags: c_int) -> c_int {
    let Some(handle) = HANDLES.get(h) else {
        return CS_ERR_BAD_HANDLE;
    };
    if handle.lost.load(Ordering::Acquire) {
        return CS_ERR_LIBRARY;
    }
    let fd = handle.cpg.as_raw_fd();
    let code = dispatch_loop(
        flags,
        fd,
        || dispatch_step(h, &handle),
        || handle.cpg.engine_gone(),
    );
    if code == CS_ERR_LIBRARY {
        handle.lost.store(true, Ordering::Release);
        guard(|| {
            tell_shutdown(&handle);
            CS_OK
        });
    }
    code
}

/// Copies `text` into a C string field, NUL-terminated and truncated to fit.
fn set_text(field: &mut [u8], text: &str) {
    let n = text.len().min(field.len() - 1);
    field[..n].copy_from_slice(&text.as_bytes()[..n]);
    field[n] = 0;
}

/// A malloc'd C string (the caller frees it, as Corosync's callers do).
fn malloc_str(text: &str) -> *mut c_char {
    let c = CString::new(text.replace('\0', "")).unwrap_or_default();
    // SAFETY: `c` is a valid NUL-terminated string; strdup copies it into malloc memory.
    unsafe { libc::strdup(c.as_ptr()) }
}

/// `corosync_cfg_ring_status_get`: one "interface", ringcast's single ring, named by
/// this node's address, with its state. The arrays and strings are malloc'd; the
/// caller frees them.
///
/// # Safety
/// C caller: the three out pointers NULL or valid for writing.
unsafe extern "C-unwind" fn ring_status_get(
    h: u64,
    names: *mut *mut *mut c_char,
    statuses: *mut *mut *mut c_char,
    count: *mut c_uint,
) -> c_int {
    guard(|| {
        if names.is_null() || statuses.is_null() || count.is_null() {
            return CS_ERR_INVALID_PARAM;
        }
        let handle = tri!(live(h));
        let (nodes, ring) = tri!(handle.nodes());
        let local = handle.cpg.local_node().unwrap_or(0);
        let own = nodes
            .iter()
            .find(|(id, _)| *id == local)
            .map(|(_, a)| a.ip().to_string())
            .unwrap_or_else(|| "ringcast".to_owned());
        let state = if ring.contains(&local) {
            format!(
                "ring 0 active with no faults ({} nodes in the ring)",
                ring.len()
            )
        } else {
            "ring 0 not operational".to_owned()
        };
        let size = std::mem::size_of::<*mut c_char>();
        // SAFETY: plain allocations of one pointer each; checked below.
        let (n_arr, s_arr) = unsafe {
            (
                libc::malloc(size).cast::<*mut c_char>(),
                libc::malloc(size).cast::<*mut c_char>(),
            )
        };
        if n_arr.is_null() || s_arr.is_null() {
            // SAFETY: free accepts NULL and what malloc returned.
            unsafe {
                libc::free(n_arr.cast());
                libc::free(s_arr.cast());
            }
            return CS_ERR_NO_MEMORY;
        }
        // SAFETY: each array has room for one pointer; the out pointers are valid.
        unsafe {
            n_arr.write(malloc_str(&own));
            s_arr.write(malloc_str(&state));
            names.write(n_arr);
            statuses.write(s_arr);
            count.write(1);
        }
        CS_OK
    })
}

/// `corosync_cfg_node_status_get` (version 1): reachable while the node is in the
/// ring; one link (ringcast runs a single ring) from this node's address to its.
///
/// # Safety
/// C caller: `out` NULL or a `struct corosync_cfg_node_status_v1`.
unsafe extern "C-unwind" fn node_status_get(
    h: u64,
    nodeid: c_uint,
    version: c_int,
    out: *mut c_void,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return CS_ERR_INVALID_PARAM;
        }
        if version != NODE_STATUS_V1 {
            return CS_ERR_NOT_SUPPORTED;
        }
        let handle = tri!(live(h));
        let (nodes, ring) = tri!(handle.nodes());
        let local = handle.cpg.local_node().unwrap_or(0);
        let Some((_, addr)) = nodes.iter().find(|(id, _)| *id == nodeid) else {
            return CS_ERR_NOT_EXIST;
        };
        let own = nodes.iter().find(|(id, _)| *id == local).map(|(_, a)| *a);
        let reachable = ring.contains(&nodeid) && ring.contains(&local);
        // SAFETY: all-zero bytes are a valid NodeStatusV1 (integers and byte arrays).
        let mut status: NodeStatusV1 = unsafe { std::mem::zeroed() };
        status.version = NODE_STATUS_V1;
        status.nodeid = nodeid;
        status.reachable = u8::from(reachable || nodeid == local);
        status.remote = u8::from(nodeid != local);
        let link = &mut status.link_status[0];
        link.enabled = 1;
        link.connected = u8::from(reachable || nodeid == local);
        if let Some(own) = own {
            set_text(&mut link.src_ipaddr, &own.ip().to_string());
        }
        set_text(&mut link.dst_ipaddr, &addr.ip().to_string());
        // SAFETY: non-NULL; the caller passes a node status of version 1.
        unsafe { out.cast::<NodeStatusV1>().write(status) };
        CS_OK
    })
}

/// # Safety
/// C caller: `num` NULL or valid; `addrs` valid for `max` entries.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn corosync_cfg_get_node_addrs(
    h: u64,
    nodeid: c_uint,
    max: usize,
    num: *mut c_int,
    addrs: *mut NodeAddress,
) -> c_int {
    guard(|| {
        if num.is_null() || (addrs.is_null() && max > 0) {
            return CS_ERR_INVALID_PARAM;
        }
        let handle = tri!(live(h));
        let (nodes, _) = tri!(handle.nodes());
        let found: Vec<SocketAddr> = nodes
            .iter()
            .filter(|(id, _)| *id == nodeid)
            .map(|(_, a)| *a)
            .collect();
        if found.is_empty() {
            return CS_ERR_NOT_EXIST;
        }
        let count = found.len().min(max);
        for (i, addr) in found.iter().take(count).enumerate() {
            let mut entry = NodeAddress {
                address_length: 0,
                address: [0; std::mem::size_of::<libc::sockaddr_in6>()],
            };
            match addr {
                SocketAddr::V4(a) => {
                    let sin = libc::sockaddr_in {
                        sin_family: libc::AF_INET as libc::sa_family_t,
                        sin_port: a.port().to_be(),
                        sin_addr: libc::in_addr {
                            s_addr: u32::from_ne_bytes(a.ip().octets()),
                        },
                        sin_zero: [0; 8],
                    };
                    let n = std::mem::size_of::<libc::sockaddr_in>();
                    // SAFETY: `sin` is n plain bytes; `address` has room for them.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            (&raw const sin).cast::<u8>(),
                            entry.address.as_mut_ptr(),
                            n,
                        )
                    };
                    entry.address_length = n as c_int;
                }
                SocketAddr::V6(a) => {
                    let sin6 = libc::sockaddr_in6 {
                        sin6_family: libc::AF_INET6 as libc::sa_family_t,
                        sin6_port: a.port().to_be(),
                        sin6_flowinfo: 0,
                        sin6_addr: libc::in6_addr {
                            s6_addr: a.ip().octets(),
                        },
                        sin6_scope_id: a.scope_id(),
                    };
                    let n = std::mem::size_of::<libc::sockaddr_in6>();
                    // SAFETY: `sin6` is n plain bytes; `address` is exactly n bytes.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            (&raw const sin6).cast::<u8>(),
                            entry.address.as_mut_ptr(),
                            n,
                        )
                    };
                    entry.address_length = n as c_int;
                }
            }
            // SAFETY: `addrs` has room for `max` >= `count` entries (the C contract).
            unsafe { addrs.add(i).write(entry) };
        }
        // SAFETY: checked non-NULL; valid for writing.
        unsafe { num.write(count as c_int) };
        CS_OK
    })
}

/// # Safety
/// C caller: `nodeid` NULL or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn corosync_cfg_local_get(h: u64, nodeid: *mut c_uint) -> c_int {
    guard(|| {
        let handle = tri!(live(h));
        match handle.cpg.local_node() {
            // SAFETY: NULL or valid for writing (the C contract).
            Ok(node) => unsafe { put(nodeid, node) },
            Err(e) => handle.fail(&e),
        }
    })
}

extern "C-unwind" fn trackstart(h: u64, _flags: u8) -> c_int {
    guard(|| {
        let handle = tri!(live(h));
        handle.tracking.store(true, Ordering::Release);
        CS_OK
    })
}

extern "C-unwind" fn trackstop(h: u64) -> c_int {
    guard(|| {
        let handle = tri!(live(h));
        handle.tracking.store(false, Ordering::Release);
        CS_OK
    })
}

/// Asks this node's engine to leave the ring and exit (SIGTERM to the engine's pid,
/// from the session socket's credentials): what `corosync-cfgtool -H` asks of
/// Corosync. No veto round: every flag shuts down. `CS_ERR_ACCESS` when the caller may
/// not signal the engine.
#[unsafe(no_mangle)]
pub extern "C-unwind" fn corosync_cfg_try_shutdown(h: u64, flags: c_int) -> c_int {
    guard(|| {
        if !(0..=2).contains(&flags) {
            return CS_ERR_INVALID_PARAM;
        }
        let handle = tri!(live(h));
        let pid = match handle.cpg.engine_pid() {
            Ok(pid) if pid > 0 => pid,
            Ok(_) => return CS_ERR_LIBRARY,
            Err(e) => return handle.fail(&e),
        };
        // SAFETY: sends a signal; no memory is involved.
        if unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) } != 0 {
            return CS_ERR_ACCESS;
        }
        CS_OK
    })
}

/// The engine does not wait for answers (no veto round): accepted and ignored.
#[unsafe(no_mangle)]
pub extern "C-unwind" fn corosync_cfg_replyto_shutdown(h: u64, flags: c_int) -> c_int {
    guard(|| {
        if !(0..=1).contains(&flags) {
            return CS_ERR_INVALID_PARAM;
        }
        let _handle = tri!(HANDLES.get(h).ok_or(CS_ERR_BAD_HANDLE));
        CS_OK
    })
}

/// No ringcast meaning (fencing is outside ringcast): NOT_SUPPORTED.
#[unsafe(no_mangle)]
pub extern "C-unwind" fn corosync_cfg_kill_node(
    h: u64,
    _nodeid: c_uint,
    _reason: *const c_char,
) -> c_int {
    guard(|| {
        let _handle = tri!(live(h));
        CS_ERR_NOT_SUPPORTED
    })
}

/// ringcastd reads its configuration at start only: NOT_SUPPORTED.
#[unsafe(no_mangle)]
pub extern "C-unwind" fn corosync_cfg_reload_config(h: u64) -> c_int {
    guard(|| {
        let _handle = tri!(live(h));
        CS_ERR_NOT_SUPPORTED
    })
}

/// ringcastd logs to stderr (its service manager keeps the files): NOT_SUPPORTED.
#[unsafe(no_mangle)]
pub extern "C-unwind" fn corosync_cfg_reopen_log_files(h: u64) -> c_int {
    guard(|| {
        let _handle = tri!(live(h));
        CS_ERR_NOT_SUPPORTED
    })
}

// The eight functions Debian's libcfg.so.7 exports at COROSYNC_CFG_0.82 (cfg.map).
versioned! {
    corosync_cfg_initialize => initialize,
    corosync_cfg_finalize => finalize,
    corosync_cfg_fd_get => fd_get,
    corosync_cfg_dispatch => dispatch,
    corosync_cfg_ring_status_get => ring_status_get,
    corosync_cfg_node_status_get => node_status_get,
    corosync_cfg_trackstart => trackstart,
    corosync_cfg_trackstop => trackstop,
}
