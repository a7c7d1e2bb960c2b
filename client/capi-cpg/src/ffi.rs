//! What the C libraries (libcpg.so.4, libcfg.so.7) share: `cs_error_t` values, the
//! process-wide handle table, the panic guard at the FFI boundary, and the assembler
//! trampolines that give exported functions their symbol versions.
//!
//! Symbol versions: rustc links a cdylib with its own anonymous version script that
//! names every `#[no_mangle]` function and ends in `local: *`. A function that must
//! carry a version (`cpg_join@@COROSYNC_CPG_1.0`) is therefore not `#[no_mangle]`: its
//! C name is a global assembler label that jumps to the Rust function (`versioned!`),
//! and the crate's own version script (passed by build.rs) names it; an exact name in
//! a named version wins over rustc's `local: *`. A tail jump adds no stack frame, so
//! unwinding (pthread_cancel) sees the Rust function directly.

#![allow(dead_code)]

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::os::raw::c_int;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, MutexGuard};

pub const CS_OK: c_int = 1;
pub const CS_ERR_LIBRARY: c_int = 2;
pub const CS_ERR_TRY_AGAIN: c_int = 6;
pub const CS_ERR_INVALID_PARAM: c_int = 7;
pub const CS_ERR_NO_MEMORY: c_int = 8;
pub const CS_ERR_BAD_HANDLE: c_int = 9;
pub const CS_ERR_BUSY: c_int = 10;
pub const CS_ERR_NOT_EXIST: c_int = 12;
pub const CS_ERR_NAME_TOO_LONG: c_int = 13;
pub const CS_ERR_NOT_SUPPORTED: c_int = 19;
pub const CS_ERR_TOO_BIG: c_int = 26;
pub const CS_ERR_NO_SECTIONS: c_int = 27;

pub const CS_DISPATCH_ONE: c_int = 1;
pub const CS_DISPATCH_ALL: c_int = 2;
pub const CS_DISPATCH_BLOCKING: c_int = 3;
pub const CS_DISPATCH_ONE_NONBLOCKING: c_int = 4;

/// The `cs_error_t` of a client error.
pub fn status(e: &ringcast::Error) -> c_int {
    e.code() as c_int
}

/// Runs one API call; a panic inside becomes `CS_ERR_LIBRARY` instead of unwinding
/// into C (docs/cpg.md §4).
pub fn guard(f: impl FnOnce() -> c_int) -> c_int {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(CS_ERR_LIBRARY)
}

/// A process-wide table of live handles. A handle is `check << 32 | index`, `check` a
/// random non-zero value per slot use, so a stale or forged handle is refused even when
/// its slot was reused (Corosync's hdb does the same).
pub struct Table<T> {
    slots: Mutex<Vec<Slot<T>>>,
}

struct Slot<T> {
    check: u32,
    value: Option<Arc<T>>,
}

fn random_u32() -> u32 {
    // RandomState is seeded from the OS once per process and varied per instance.
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    (h.finish() >> 32) as u32 | 1
}

impl<T> Table<T> {
    pub const fn new() -> Table<T> {
        Table {
            slots: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Slot<T>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores the value `make` builds from its handle; returns the handle.
    pub fn insert(&self, make: impl FnOnce(u64) -> T) -> u64 {
        let mut slots = self.lock();
        let index = match slots.iter().position(|s| s.value.is_none()) {
            Some(i) => i,
            None => {
                slots.push(Slot {
                    check: 0,
                    value: None,
                });
                slots.len() - 1
            }
        };
        let check = random_u32();
        let handle = (u64::from(check) << 32) | index as u64;
        slots[index] = Slot {
            check,
            value: Some(Arc::new(make(handle))),
        };
        handle
    }

    pub fn get(&self, handle: u64) -> Option<Arc<T>> {
        let (check, index) = ((handle >> 32) as u32, handle as u32 as usize);
        let slots = self.lock();
        let slot = slots.get(index)?;
        (slot.check == check).then(|| slot.value.clone()).flatten()
    }

    /// Takes the handle out of the table: later lookups fail. Only one caller gets it.
    pub fn remove(&self, handle: u64) -> Option<Arc<T>> {
        let (check, index) = ((handle >> 32) as u32, handle as u32 as usize);
        let mut slots = self.lock();
        let slot = slots.get_mut(index)?;
        if slot.check != check {
            return None;
        }
        slot.value.take()
    }

    /// Removes every value `drop_it` picks (iterations of a finalized handle).
    pub fn remove_where(&self, mut drop_it: impl FnMut(&T) -> bool) {
        let removed: Vec<Arc<T>> = {
            let mut slots = self.lock();
            slots
                .iter_mut()
                .filter(|s| s.value.as_deref().is_some_and(&mut drop_it))
                .filter_map(|s| s.value.take())
                .collect()
        };
        drop(removed);
    }
}

/// Waits until `fd` is readable or `timeout_ms` passed. A libc cancellation point: a
/// thread blocked in dispatch can be cancelled here (docs/cpg.md §4), so no
/// `catch_unwind` frame may be on the stack when this is called.
pub fn poll_in(fd: c_int, timeout_ms: c_int) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) > 0 }
}

/// Defines `$name` as a global function symbol that jumps to `$target` (see the module
/// docs): for functions whose symbol carries a version from the crate's version script.
#[macro_export]
macro_rules! versioned {
    ($($name:ident => $target:path),* $(,)?) => {
        $(
            #[cfg(target_arch = "x86_64")]
            std::arch::global_asm!(
                concat!(".globl ", stringify!($name)),
                concat!(".type ", stringify!($name), ",@function"),
                concat!(stringify!($name), ":"),
                "jmp {target}",
                concat!(".size ", stringify!($name), ", .-", stringify!($name)),
                target = sym $target,
            );
            #[cfg(target_arch = "aarch64")]
            std::arch::global_asm!(
                concat!(".globl ", stringify!($name)),
                concat!(".type ", stringify!($name), ",%function"),
                concat!(stringify!($name), ":"),
                "b {target}",
                concat!(".size ", stringify!($name), ", .-", stringify!($name)),
                target = sym $target,
            );
        )*
    };
}

/// How long a blocking dispatch sleeps in `poll` before it looks again (a finalize
/// from another thread is noticed within this).
const DISPATCH_NAP_MS: c_int = 100;

/// The dispatch loop of both libraries (docs/cpg.md §4). `step` handles at most
/// one pending event (`Ok(true)`) or finds none (`Ok(false)`); `gone` tells a lost
/// engine from an idle one. Steps run under the panic guard; the waits happen in
/// `poll` outside it, so `pthread_cancel` of a blocked thread unwinds cleanly.
pub fn dispatch_loop(
    flags: c_int,
    fd: c_int,
    mut step: impl FnMut() -> Result<bool, c_int>,
    gone: impl Fn() -> bool,
) -> c_int {
    let mut handled = 0usize;
    let mut woken = false;
    loop {
        let mut result = Err(CS_ERR_LIBRARY);
        let code = guard(|| {
            result = step();
            CS_OK
        });
        if code != CS_OK {
            return code;
        }
        match result {
            Err(code) => return code,
            Ok(true) => {
                handled += 1;
                woken = false;
                if flags == CS_DISPATCH_ONE || flags == CS_DISPATCH_ONE_NONBLOCKING {
                    return CS_OK;
                }
            }
            Ok(false) => {
                let waits = flags != CS_DISPATCH_ALL && flags != CS_DISPATCH_ONE_NONBLOCKING;
                // Nothing pending although the fd said so (or a non-blocking call found
                // nothing at all): a dead engine is an error, as in Corosync.
                let look = if waits { woken } else { handled == 0 };
                if look && guard(|| if gone() { CS_ERR_LIBRARY } else { CS_OK }) != CS_OK {
                    return CS_ERR_LIBRARY;
                }
                match flags {
                    CS_DISPATCH_ALL => return CS_OK,
                    CS_DISPATCH_ONE_NONBLOCKING => return CS_ERR_TRY_AGAIN,
                    // ONE waits for its event; BLOCKING (and any other value, as in
                    // Corosync) handles events until an error.
                    _ => woken = poll_in(fd, DISPATCH_NAP_MS),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_a_call_becomes_cs_err_library() {
        // The default hook would print the panic; the test expects it.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let code = guard(|| panic!("a bug inside the library"));
        std::panic::set_hook(hook);
        assert_eq!(code, CS_ERR_LIBRARY);
        assert_eq!(guard(|| CS_ERR_TRY_AGAIN), CS_ERR_TRY_AGAIN);
    }

    /// Every exported function of both libraries runs its body under `guard`, except
    /// `dispatch`, which guards each step (itself or through `dispatch_loop`) and calls
    /// the C callbacks outside (a forced unwind from `pthread_cancel` must pass through
    /// them).
    #[test]
    fn every_exported_function_is_guarded() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for lib in ["capi-cpg/src/lib.rs", "capi-cfg/src/lib.rs"] {
            let source = std::fs::read_to_string(root.join(lib)).unwrap();
            let mut exported = 0;
            for (at, _) in source.match_indices("extern \"C-unwind\" fn ") {
                let rest = &source[at..];
                let name: String = rest["extern \"C-unwind\" fn ".len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let body = rest[rest.find('{').unwrap() + 1..].trim_start();
                let whole = &body[..body.find("\n}").unwrap()];
                let guarded = body.starts_with("guard(")
                    || (name == "dispatch"
                        && (whole.contains("guard(") || whole.contains("dispatch_loop(")));
                assert!(guarded, "{lib}: {name} does not run under guard");
                exported += 1;
            }
            assert!(
                exported >= 10,
                "{lib}: only {exported} exported functions found"
            );
        }
    }
}
