//! `libcpg.so.4`: Corosync's closed process group C API (`corosync/cpg.h`) over the
//! ringcast client, as a drop-in for Debian's libcpg (docs/cpg.md §2–§5, §12).
//! docs/c-api.md describes the behaviour C programs see and where it differs from
//! Corosync's library.
//!
//! Every exported function: a panic inside never crosses into C (`CS_ERR_LIBRARY`);
//! handles live in a process-wide table with check values ([`ffi::Table`]); callbacks run
//! without any lock of the library held, so they may call any function, including
//! `cpg_finalize` of their own handle.

#![deny(unsafe_op_in_unsafe_fn)]

#[macro_use]
mod ffi;

use std::collections::HashMap;
use std::ffi::c_void;
use std::os::fd::AsRawFd;
use std::os::raw::{c_int, c_uint};
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use ffi::*;
use ringcast::{
    Address, ConnectOptions, Cpg, Dispatch, GroupMember, Guarantee, Handler, IterationKind,
    RetainedBuffer, RingId, Status,
};

/// What `cpg_max_atomic_msgsize_get` reports (Corosync's value: 1 MiB - 1024). Larger
/// messages are sent too (the library fragments them), up to the engine's maximum.
const MAX_ATOMIC_MSG_BYTES: u32 = 1_047_552;
const CPG_MAX_NAME_LENGTH: usize = 128;
const MODEL_V1: c_int = 1;
const DELIVER_INITIAL_TOTEM_CONF: c_uint = 1;

#[repr(C)]
pub struct CpgName {
    length: u32,
    value: [u8; CPG_MAX_NAME_LENGTH],
}

#[repr(C)]
#[derive(Copy, Clone)]
pub struct CpgAddress {
    nodeid: u32,
    pid: u32,
    reason: u32,
}

#[repr(C)]
#[derive(Copy, Clone)]
pub struct CpgRingId {
    nodeid: u32,
    seq: u64,
}

#[repr(C)]
pub struct CpgIterationDescription {
    group: CpgName,
    nodeid: u32,
    pid: u32,
}

type DeliverFn = unsafe extern "C-unwind" fn(u64, *const CpgName, u32, u32, *mut c_void, usize);
type ConfchgFn = unsafe extern "C-unwind" fn(
    u64,
    *const CpgName,
    *const CpgAddress,
    usize,
    *const CpgAddress,
    usize,
    *const CpgAddress,
    usize,
);
type TotemConfchgFn = unsafe extern "C-unwind" fn(u64, CpgRingId, u32, *const u32);

#[repr(C)]
pub struct CpgCallbacks {
    deliver: Option<DeliverFn>,
    confchg: Option<ConfchgFn>,
}

#[repr(C)]
pub struct CpgModelV1Data {
    model: c_int,
    deliver: Option<DeliverFn>,
    confchg: Option<ConfchgFn>,
    totem_confchg: Option<TotemConfchgFn>,
    flags: c_uint,
}

/// A `cpg_zcb_alloc` buffer.
enum Zcb {
    /// In the connection's shared region: sent without a library copy.
    Shared(RetainedBuffer),
    /// On the heap, when the region has no room for it (larger than the send buffers):
    /// sent as `cpg_mcast_joined` sends. Held only to keep the memory alive.
    Heap(#[allow(dead_code)] Box<[u8]>),
}

/// One `cpg_handle_t`.
struct Handle {
    id: u64,
    cpg: Cpg,
    deliver: Option<DeliverFn>,
    confchg: Option<ConfchgFn>,
    totem_confchg: Option<TotemConfchgFn>,
    context: AtomicPtr<c_void>,
    /// `cpg_finalize` ran: a dispatch in progress returns `CS_ERR_BAD_HANDLE`.
    finalized: AtomicBool,
    /// A call found the engine gone: every later call but finalize gets
    /// `CS_ERR_LIBRARY`, as Corosync's library does once its IPC connection is dead.
    lost: AtomicBool,
    /// `cpg_zcb_alloc` buffers by address.
    zcb: Mutex<HashMap<usize, Zcb>>,
}

/// A `cpg_iteration_handle_t`: a snapshot of the group table taken at initialize.
struct Iteration {
    owner: u64,
    entries: Vec<GroupMember>,
    next: Mutex<usize>,
}

static HANDLES: ffi::Table<Handle> = ffi::Table::new();
static ITERATIONS: ffi::Table<Iteration> = ffi::Table::new();

impl Handle {
    /// The `cs_error_t` of a failed call; remembers a lost engine.
    fn fail(&self, e: &ringcast::Error) -> c_int {
        let code = status(e);
        if code == CS_ERR_LIBRARY {
            self.lost.store(true, Ordering::Release);
        }
        code
    }

    fn result(&self, r: ringcast::Result<()>) -> c_int {
        match r {
            Ok(()) => CS_OK,
            Err(e) => self.fail(&e),
        }
    }

    fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// A send refused with TRY_AGAIN is LIBRARY when the reason is a dead engine.
    fn send_result(&self, r: ringcast::Result<()>) -> c_int {
        match r {
            Err(e) if e.is_try_again() && self.cpg.engine_gone() => {
                self.lost.store(true, Ordering::Release);
                CS_ERR_LIBRARY
            }
            other => self.result(other),
        }
    }
}

/// The live handle `h`, or the `cs_error_t` to return: BAD_HANDLE, or LIBRARY once the
/// engine was lost.
fn live(h: u64) -> Result<Arc<Handle>, c_int> {
    let handle = HANDLES.get(h).ok_or(CS_ERR_BAD_HANDLE)?;
    if handle.is_lost() {
        return Err(CS_ERR_LIBRARY);
    }
    Ok(handle)
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(code) => return code,
        }
    };
}

/// The bytes of a group name: INVALID_PARAM for NULL, NAME_TOO_LONG above 128 bytes.
///
/// # Safety
/// `name` is NULL or points to a `struct cpg_name`.
unsafe fn name_bytes<'a>(name: *const CpgName) -> Result<&'a [u8], c_int> {
    // SAFETY: the caller passes NULL or a valid cpg_name, which outlives the call.
    let name = unsafe { name.as_ref() }.ok_or(CS_ERR_INVALID_PARAM)?;
    let len = name.length as usize;
    if len > CPG_MAX_NAME_LENGTH {
        return Err(CS_ERR_NAME_TOO_LONG);
    }
    Ok(&name.value[..len])
}

fn c_name(bytes: &[u8]) -> CpgName {
    let mut name = CpgName {
        length: 0,
        value: [0; CPG_MAX_NAME_LENGTH],
    };
    let n = bytes.len().min(CPG_MAX_NAME_LENGTH);
    name.value[..n].copy_from_slice(&bytes[..n]);
    name.length = n as u32;
    name
}

fn c_addresses(list: &[Address]) -> Vec<CpgAddress> {
    list.iter()
        .map(|a| CpgAddress {
            nodeid: a.node,
            pid: a.pid,
            reason: a.reason,
        })
        .collect()
}

/// Writes `value` through `out`: INVALID_PARAM for NULL.
///
/// # Safety
/// `out` is NULL or valid for a write of `T`.
unsafe fn put<T>(out: *mut T, value: T) -> c_int {
    if out.is_null() {
        return CS_ERR_INVALID_PARAM;
    }
    // SAFETY: non-NULL, and the caller passes a pointer valid for writing a T.
    unsafe { out.write(value) };
    CS_OK
}

fn guarantee(g: c_int) -> Guarantee {
    match g {
        0 => Guarantee::Unordered,
        1 => Guarantee::Fifo,
        3 => Guarantee::Safe,
        _ => Guarantee::Agreed,
    }
}

// ---------------------------------------------------------------------------------
// Connection

/// `cpg_initialize`: model V1 with the two callbacks, flags 0, no context.
///
/// # Safety
/// C caller: `handle` valid for writing, `callbacks` NULL or a `cpg_callbacks_t`.
unsafe extern "C-unwind" fn initialize(handle: *mut u64, callbacks: *const CpgCallbacks) -> c_int {
    guard(|| {
        // SAFETY: NULL or a valid cpg_callbacks_t (the C contract).
        let (deliver, confchg) = match unsafe { callbacks.as_ref() } {
            Some(c) => (c.deliver, c.confchg),
            None => (None, None),
        };
        create(handle, deliver, confchg, None, 0, std::ptr::null_mut())
    })
}

/// `cpg_model_initialize`.
///
/// # Safety
/// C caller: `handle` valid for writing; `model_data` NULL or a `cpg_model_v1_data_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn cpg_model_initialize(
    handle: *mut u64,
    model: c_int,
    model_data: *const CpgModelV1Data,
    context: *mut c_void,
) -> c_int {
    guard(|| {
        if model != MODEL_V1 {
            return CS_ERR_INVALID_PARAM;
        }
        // SAFETY: NULL or a valid cpg_model_v1_data_t (the C contract).
        match unsafe { model_data.as_ref() } {
            None => create(handle, None, None, None, 0, context),
            Some(m) => create(
                handle,
                m.deliver,
                m.confchg,
                m.totem_confchg,
                m.flags,
                context,
            ),
        }
    })
}

fn create(
    out: *mut u64,
    deliver: Option<DeliverFn>,
    confchg: Option<ConfchgFn>,
    totem_confchg: Option<TotemConfchgFn>,
    flags: c_uint,
    context: *mut c_void,
) -> c_int {
    if out.is_null() {
        return CS_ERR_INVALID_PARAM;
    }
    // Checked before connecting (Corosync connects first and leaks the connection).
    if flags & !DELIVER_INITIAL_TOTEM_CONF != 0 {
        return CS_ERR_INVALID_PARAM;
    }
    let options = ConnectOptions {
        initial_totem_conf: flags & DELIVER_INITIAL_TOTEM_CONF != 0,
        ..ConnectOptions::default()
    };
    let cpg = match Cpg::connect(&options) {
        Ok(cpg) => cpg,
        Err(e) => return status(&e),
    };
    let id = HANDLES.insert(|id| Handle {
        id,
        cpg,
        deliver,
        confchg,
        totem_confchg,
        context: AtomicPtr::new(context),
        finalized: AtomicBool::new(false),
        lost: AtomicBool::new(false),
        zcb: Mutex::new(HashMap::new()),
    });
    // SAFETY: checked non-NULL above; valid for writing (the C contract).
    unsafe { put(out, id) }
}

/// `cpg_finalize`: the handle (and its iterations) is gone whatever the result; OK, or
/// LIBRARY when the engine had gone. A second or concurrent call gets BAD_HANDLE.
extern "C-unwind" fn finalize(h: u64) -> c_int {
    guard(|| {
        let Some(handle) = HANDLES.remove(h) else {
            return CS_ERR_BAD_HANDLE;
        };
        handle.finalized.store(true, Ordering::Release);
        ITERATIONS.remove_where(|it| it.owner == h);
        let was_lost = handle.is_lost();
        match handle.cpg.finalize() {
            Ok(()) if !was_lost => CS_OK,
            Ok(()) => CS_ERR_LIBRARY,
            Err(e) => status(&e),
        }
    })
}

/// `cpg_fd_get`: readable exactly while events are pending or the engine is gone.
///
/// # Safety
/// C caller: `fd` NULL or valid for writing.
unsafe extern "C-unwind" fn fd_get(h: u64, fd: *mut c_int) -> c_int {
    guard(|| {
        let handle = tri!(HANDLES.get(h).ok_or(CS_ERR_BAD_HANDLE));
        // SAFETY: NULL or valid for writing (the C contract).
        unsafe { put(fd, handle.cpg.as_raw_fd()) }
    })
}

/// `cpg_max_atomic_msgsize_get`.
///
/// # Safety
/// C caller: `size` NULL or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn cpg_max_atomic_msgsize_get(h: u64, size: *mut u32) -> c_int {
    guard(|| {
        let handle = tri!(HANDLES.get(h).ok_or(CS_ERR_BAD_HANDLE));
        let max = (handle.cpg.max_message_size() as u64).min(u64::from(MAX_ATOMIC_MSG_BYTES));
        // SAFETY: NULL or valid for writing (the C contract).
        unsafe { put(size, max as u32) }
    })
}

/// # Safety
/// C caller: `context` NULL or valid for writing.
unsafe extern "C-unwind" fn context_get(h: u64, context: *mut *mut c_void) -> c_int {
    guard(|| {
        let handle = tri!(HANDLES.get(h).ok_or(CS_ERR_BAD_HANDLE));
        // SAFETY: NULL or valid for writing (the C contract).
        unsafe { put(context, handle.context.load(Ordering::Acquire)) }
    })
}

extern "C-unwind" fn context_set(h: u64, context: *mut c_void) -> c_int {
    guard(|| {
        let handle = tri!(HANDLES.get(h).ok_or(CS_ERR_BAD_HANDLE));
        handle.context.store(context, Ordering::Release);
        CS_OK
    })
}

// ---------------------------------------------------------------------------------
// Dispatch

/// Calls the C callbacks of one handle.
struct Callbacks<'a> {
    handle: &'a Handle,
    /// Deliveries that lie in memory this process maps read-only are copied here
    /// first: Corosync's deliver callback may write the message (programs byte-swap
    /// headers in place).
    scratch: Vec<u8>,
}

/// Set `RINGCAST_CPG_DELIVER_IN_PLACE=1` when the program never writes a delivered
/// message: large deliveries are then handed over where the engine put them, read-only.
fn deliver_in_place() -> bool {
    static IN_PLACE: OnceLock<bool> = OnceLock::new();
    *IN_PLACE
        .get_or_init(|| std::env::var_os("RINGCAST_CPG_DELIVER_IN_PLACE").is_some_and(|v| v == "1"))
}

impl Handler for Callbacks<'_> {
    fn deliver(&mut self, cpg: &Cpg, group: &[u8], node: u32, pid: u32, msg: &[u8]) {
        let Some(f) = self.handle.deliver else {
            return;
        };
        let name = c_name(group);
        let ptr = if !deliver_in_place() && cpg.is_read_only(msg) {
            self.scratch.clear();
            self.scratch.extend_from_slice(msg);
            self.scratch.as_mut_ptr()
        } else {
            msg.as_ptr().cast_mut()
        };
        // SAFETY: a C callback given by the program; every pointer is valid for the
        // call (the message is writable unless the program opted into read-only).
        unsafe { f(self.handle.id, &name, node, pid, ptr.cast(), msg.len()) };
    }

    fn confchg(
        &mut self,
        _cpg: &Cpg,
        group: &[u8],
        members: &[Address],
        left: &[Address],
        joined: &[Address],
    ) {
        let Some(f) = self.handle.confchg else {
            return;
        };
        let name = c_name(group);
        let (m, l, j) = (c_addresses(members), c_addresses(left), c_addresses(joined));
        // SAFETY: a C callback given by the program; the lists live for the call.
        unsafe {
            f(
                self.handle.id,
                &name,
                m.as_ptr(),
                m.len(),
                l.as_ptr(),
                l.len(),
                j.as_ptr(),
                j.len(),
            )
        };
    }

    fn totem_confchg(&mut self, _cpg: &Cpg, ring_id: RingId, members: &[u32]) {
        let Some(f) = self.handle.totem_confchg else {
            return;
        };
        let ring = CpgRingId {
            nodeid: ring_id.rep,
            seq: ring_id.seq,
        };
        // SAFETY: a C callback given by the program; the list lives for the call.
        unsafe { f(self.handle.id, ring, members.len() as u32, members.as_ptr()) };
    }
}

/// One non-blocking step of a dispatch: `Ok(true)` when an event was handled,
/// `Ok(false)` when none was pending.
fn dispatch_step(handle: &Handle) -> Result<bool, c_int> {
    let mut callbacks = Callbacks {
        handle,
        scratch: Vec::new(),
    };
    let r = handle
        .cpg
        .dispatch(Dispatch::OneNonBlocking, &mut callbacks);
    if handle.finalized.load(Ordering::Acquire) {
        // cpg_finalize ran in a callback or on another thread.
        return Err(CS_ERR_BAD_HANDLE);
    }
    match r {
        Ok(()) => Ok(true),
        // Nothing pending, or another thread is dispatching this handle right now.
        Err(e) if e.is_try_again() || e.status() == Status::Busy => Ok(false),
        Err(e) => Err(handle.fail(&e)),
    }
}

/// `cpg_dispatch` (docs/cpg.md §4, [`ffi::dispatch_loop`]).
extern "C-unwind" fn dispatch(h: u64, flags: c_int) -> c_int {
    let handle = match HANDLES.get(h) {
        Some(handle) => handle,
        None => return CS_ERR_BAD_HANDLE,
    };
    if handle.is_lost() {
        return CS_ERR_LIBRARY;
    }
    let fd = handle.cpg.as_raw_fd();
    let code = dispatch_loop(
        flags,
        fd,
        || dispatch_step(&handle),
        || handle.cpg.engine_gone(),
    );
    if code == CS_ERR_LIBRARY {
        handle.lost.store(true, Ordering::Release);
    }
    code
}

// ---------------------------------------------------------------------------------
// Groups

/// # Safety
/// C caller: `group` NULL or a `struct cpg_name`.
unsafe extern "C-unwind" fn join(h: u64, group: *const CpgName) -> c_int {
    guard(|| {
        // SAFETY: NULL or a valid cpg_name (the C contract). Checked before the handle.
        let name = tri!(unsafe { name_bytes(group) });
        let handle = tri!(live(h));
        handle.result(handle.cpg.join(name))
    })
}

/// # Safety
/// C caller: `group` NULL or a `struct cpg_name`.
unsafe extern "C-unwind" fn leave(h: u64, group: *const CpgName) -> c_int {
    guard(|| {
        // SAFETY: NULL or a valid cpg_name (the C contract). Checked before the handle.
        let name = tri!(unsafe { name_bytes(group) });
        let handle = tri!(live(h));
        handle.result(handle.cpg.leave(name))
    })
}

/// `cpg_mcast_joined`: the iovecs are gathered straight into the submit ring, or above
/// one ring record into a send buffer of the shared region (above all the send
/// buffers, on the heap and then into the ring in pieces); TRY_AGAIN when the ring or
/// the buffers are full.
///
/// # Safety
/// C caller: `iov` points to `iov_len` iovecs, each naming readable memory.
unsafe extern "C-unwind" fn mcast_joined(
    h: u64,
    g: c_int,
    iov: *const libc::iovec,
    iov_len: c_uint,
) -> c_int {
    guard(|| {
        let handle = tri!(live(h));
        if iov.is_null() && iov_len > 0 {
            return CS_ERR_INVALID_PARAM;
        }
        let iovs: &[libc::iovec] = if iov_len == 0 {
            &[]
        } else {
            // SAFETY: non-NULL and `iov_len` entries long (the C contract).
            unsafe { std::slice::from_raw_parts(iov, iov_len as usize) }
        };
        let mut parts = Vec::with_capacity(iovs.len());
        for v in iovs {
            if v.iov_len == 0 {
                continue;
            }
            if v.iov_base.is_null() {
                return CS_ERR_INVALID_PARAM;
            }
            // SAFETY: each iovec names `iov_len` readable bytes for the call.
            parts.push(unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) });
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        // Gathered straight into shared memory: a ring record, or above one record a
        // send buffer (one library copy either way; see Cpg::mcast_with).
        handle.send_result(handle.cpg.mcast_with(guarantee(g), len, |dst| {
            let mut at = 0;
            for part in &parts {
                dst[at..at + part.len()].copy_from_slice(part);
                at += part.len();
            }
        }))
    })
}

/// `cpg_membership_get`: members of any group sorted by node then pid, at most
/// `*n` of them (Corosync ignores the capacity; docs/cpg.md §13 quirk 5), reason 0.
///
/// # Safety
/// C caller: `group` a `struct cpg_name`, `list` valid for `*n` entries, `n` valid.
unsafe extern "C-unwind" fn membership_get(
    h: u64,
    group: *const CpgName,
    list: *mut CpgAddress,
    n: *mut c_int,
) -> c_int {
    guard(|| {
        // SAFETY: NULL or a valid cpg_name (the C contract).
        let name = tri!(unsafe { name_bytes(group) });
        if list.is_null() || n.is_null() {
            return CS_ERR_INVALID_PARAM;
        }
        let handle = tri!(live(h));
        let members = match handle.cpg.membership(name) {
            Ok(m) => m,
            Err(e) => return handle.fail(&e),
        };
        // SAFETY: `n` is non-NULL and valid (the C contract).
        let capacity = usize::try_from(unsafe { n.read() }).unwrap_or(0);
        let count = members.len().min(capacity);
        for (i, m) in members.iter().take(count).enumerate() {
            let a = CpgAddress {
                nodeid: m.node,
                pid: m.pid,
                reason: 0,
            };
            // SAFETY: `list` has room for `*n` >= `count` entries (the C contract).
            unsafe { list.add(i).write(a) };
        }
        // SAFETY: as above.
        unsafe { n.write(count as c_int) };
        CS_OK
    })
}

/// # Safety
/// C caller: `nodeid` NULL or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn cpg_local_get(h: u64, nodeid: *mut c_uint) -> c_int {
    guard(|| {
        let handle = tri!(live(h));
        match handle.cpg.local_node() {
            // SAFETY: NULL or valid for writing (the C contract).
            Ok(node) => unsafe { put(nodeid, node) },
            Err(e) => handle.fail(&e),
        }
    })
}

/// Always DISABLED, as Corosync (docs/cpg.md §13 quirk 4): sends say TRY_AGAIN
/// themselves when the engine pushes back.
///
/// # Safety
/// C caller: `state` NULL or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn cpg_flow_control_state_get(h: u64, state: *mut c_int) -> c_int {
    guard(|| {
        let _handle = tri!(HANDLES.get(h).ok_or(CS_ERR_BAD_HANDLE));
        // SAFETY: NULL or valid for writing (the C contract).
        unsafe { put(state, 0) }
    })
}

// ---------------------------------------------------------------------------------
// Zero-copy buffers

fn note_normal_pages() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        eprintln!(
            "libcpg (ringcast): no huge pages reserved; cpg_zcb_alloc buffers use normal pages"
        );
    });
}

/// `cpg_zcb_alloc`: `size` bytes in the connection's shared region (the engine's
/// huge pages when reserved), to be written and sent with `cpg_zcb_mcast_joined`.
/// Larger than the region's send buffers (`ipc.send_buffer_bytes`), or while they are
/// all taken, the buffer comes from the heap and is sent with a copy.
///
/// # Safety
/// C caller: `buffer` NULL or valid for writing.
unsafe extern "C-unwind" fn zcb_alloc(h: u64, size: usize, buffer: *mut *mut c_void) -> c_int {
    guard(|| {
        if buffer.is_null() {
            return CS_ERR_INVALID_PARAM;
        }
        let handle = tri!(live(h));
        let (ptr, zcb) = match handle.cpg.alloc_retained(size) {
            Ok(mut buf) => {
                if !handle.cpg.huge_pages() {
                    note_normal_pages();
                }
                (buf.as_mut_ptr(), Zcb::Shared(buf))
            }
            Err(_) => {
                let mut heap = vec![0u8; size.max(1)].into_boxed_slice();
                (heap.as_mut_ptr(), Zcb::Heap(heap))
            }
        };
        handle
            .zcb
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ptr as usize, zcb);
        // SAFETY: checked non-NULL; valid for writing (the C contract).
        unsafe { put(buffer, ptr.cast()) }
    })
}

/// `cpg_zcb_free`: NULL is OK; a pointer that no `cpg_zcb_alloc` of this handle
/// returned is INVALID_PARAM.
extern "C-unwind" fn zcb_free(h: u64, buffer: *mut c_void) -> c_int {
    guard(|| {
        let handle = tri!(HANDLES.get(h).ok_or(CS_ERR_BAD_HANDLE));
        if buffer.is_null() {
            return CS_OK;
        }
        let removed = handle
            .zcb
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(buffer as usize));
        match removed {
            Some(_) => CS_OK,
            None => CS_ERR_INVALID_PARAM,
        }
    })
}

/// `RINGCAST_CPG_ZCB_COPY_BELOW=<bytes>`: zcb messages shorter than this are copied into
/// the submit ring like `cpg_mcast_joined` instead of sent in place. In place costs an
/// engine round trip per send (the call waits until the engine took its copy), which
/// for small messages costs more than the copy (docs/c-api.md has the figures). 0, the
/// default: every zcb message is sent in place.
fn zcb_copy_below() -> usize {
    static BELOW: OnceLock<usize> = OnceLock::new();
    *BELOW.get_or_init(|| {
        std::env::var("RINGCAST_CPG_ZCB_COPY_BELOW")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    })
}

/// `cpg_zcb_mcast_joined`: sends the first `len` bytes of a `cpg_zcb_alloc` buffer.
/// From the shared region the library copies nothing and returns once the engine has
/// taken its copy, so the buffer is the caller's again (see docs/c-api.md). Any other
/// pointer is sent as a one-iovec `cpg_mcast_joined`.
///
/// # Safety
/// C caller: `msg` names `len` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn cpg_zcb_mcast_joined(
    h: u64,
    g: c_int,
    msg: *mut c_void,
    len: usize,
) -> c_int {
    guard(|| {
        let handle = tri!(live(h));
        if msg.is_null() && len > 0 {
            return CS_ERR_INVALID_PARAM;
        }
        if len >= zcb_copy_below() {
            let zcb = handle.zcb.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(Zcb::Shared(buf)) = zcb.get(&(msg as usize)) {
                if len > buf.len() {
                    return CS_ERR_INVALID_PARAM;
                }
                return handle.send_result(handle.cpg.mcast_retained(guarantee(g), buf, len));
            }
        }
        let iov = libc::iovec {
            iov_base: msg,
            iov_len: len,
        };
        // SAFETY: one iovec naming the caller's `len` readable bytes.
        unsafe { mcast_joined(h, g, &iov, 1) }
    })
}

// ---------------------------------------------------------------------------------
// Iterations

/// # Safety
/// C caller: `group` NULL or a `struct cpg_name`; `it` NULL or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn cpg_iteration_initialize(
    h: u64,
    kind: c_int,
    group: *const CpgName,
    it: *mut u64,
) -> c_int {
    guard(|| {
        // Checks in Corosync's order (docs/cpg.md §3).
        let name = if group.is_null() {
            None
        } else {
            // SAFETY: a valid cpg_name (the C contract).
            Some(tri!(unsafe { name_bytes(group) }))
        };
        if it.is_null() {
            return CS_ERR_INVALID_PARAM;
        }
        let kind = match (kind, name.is_some()) {
            (2, true) => IterationKind::OneGroup,
            (1, false) => IterationKind::NameOnly,
            (3, false) => IterationKind::All,
            _ => return CS_ERR_INVALID_PARAM,
        };
        let handle = tri!(live(h));
        let entries = match handle.cpg.iterate(kind, name) {
            Ok(entries) => entries,
            Err(e) => return handle.fail(&e),
        };
        let id = ITERATIONS.insert(|_| Iteration {
            owner: handle.id,
            entries,
            next: Mutex::new(0),
        });
        // SAFETY: checked non-NULL; valid for writing (the C contract).
        unsafe { put(it, id) }
    })
}

/// NO_SECTIONS after the last entry.
///
/// # Safety
/// C caller: `desc` NULL or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn cpg_iteration_next(
    it: u64,
    desc: *mut CpgIterationDescription,
) -> c_int {
    guard(|| {
        if desc.is_null() {
            return CS_ERR_INVALID_PARAM;
        }
        let Some(iteration) = ITERATIONS.get(it) else {
            return CS_ERR_BAD_HANDLE;
        };
        let mut next = iteration.next.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = iteration.entries.get(*next) else {
            return CS_ERR_NO_SECTIONS;
        };
        *next += 1;
        let d = CpgIterationDescription {
            group: c_name(&entry.group),
            nodeid: entry.node,
            pid: entry.pid,
        };
        // SAFETY: checked non-NULL; valid for writing (the C contract).
        unsafe { put(desc, d) }
    })
}

#[unsafe(no_mangle)]
pub extern "C-unwind" fn cpg_iteration_finalize(it: u64) -> c_int {
    guard(|| match ITERATIONS.remove(it) {
        Some(_) => CS_OK,
        None => CS_ERR_BAD_HANDLE,
    })
}

// The twelve functions Debian's libcpg.so.4 exports at COROSYNC_CPG_1.0 (cpg.map).
versioned! {
    cpg_initialize => initialize,
    cpg_finalize => finalize,
    cpg_fd_get => fd_get,
    cpg_dispatch => dispatch,
    cpg_join => join,
    cpg_leave => leave,
    cpg_mcast_joined => mcast_joined,
    cpg_membership_get => membership_get,
    cpg_context_get => context_get,
    cpg_context_set => context_set,
    cpg_zcb_alloc => zcb_alloc,
    cpg_zcb_free => zcb_free,
}
