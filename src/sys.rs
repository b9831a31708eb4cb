//! The few calls into the operating system that the standard library does not offer,
//! each behind a safe function.

use std::ffi::{CStr, CString};
use std::io;

/// Makes this process non-dumpable: other processes of the same user can no longer
/// read its `/proc` files (its environment, its memory, its open files), nor attach
/// a debugger. A program Herve runs as Herve's own user so cannot read Herve's secrets
/// out of it.
pub(crate) fn make_non_dumpable() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only changes a flag of this process.
    let result = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes this process a child subreaper: descendants whose parent dies are re-parented
/// to it instead of to init, so they stay in sight.
pub(crate) fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only changes a flag of this process.
    let result = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Lifts the soft limit of open files to the hard one.
pub(crate) fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Whether this process is a child subreaper.
pub(crate) fn is_subreaper() -> bool {
    let mut flag: libc::c_int = 0;
    // SAFETY: PR_GET_CHILD_SUBREAPER writes one int to the pointer we pass.
    let result = unsafe {
        libc::prctl(
            libc::PR_GET_CHILD_SUBREAPER,
            &mut flag as *mut libc::c_int as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    result == 0 && flag != 0
}

/// Whether this process runs as root.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// The effective user id of this process.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// An account of the system, as the password database knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    pub name: String,
    pub uid: u32,
    /// Its primary group.
    pub gid: u32,
    pub home: String,
}

/// The account named `name` (or whose number is `name`).
pub(crate) fn account(name: &str) -> io::Result<Option<Account>> {
    if let Ok(uid) = name.parse::<u32>() {
        return account_by(|pwd, buf, len, result| {
            // SAFETY: every pointer is to a live buffer of the stated length.
            unsafe { libc::getpwuid_r(uid, pwd, buf, len, result) }
        });
    }
    let Ok(c_name) = CString::new(name) else {
        return Ok(None);
    };
    account_by(|pwd, buf, len, result| {
        // SAFETY: `c_name` is NUL-terminated; the other pointers are to live buffers.
        unsafe { libc::getpwnam_r(c_name.as_ptr(), pwd, buf, len, result) }
    })
}

/// The account of user id `uid`.
pub(crate) fn account_of(uid: u32) -> io::Result<Option<Account>> {
    account_by(|pwd, buf, len, result| {
        // SAFETY: every pointer is to a live buffer of the stated length.
        unsafe { libc::getpwuid_r(uid, pwd, buf, len, result) }
    })
}

fn account_by(
    lookup: impl Fn(*mut libc::passwd, *mut libc::c_char, usize, *mut *mut libc::passwd) -> libc::c_int,
) -> io::Result<Option<Account>> {
    let mut buffer = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: an all-zero passwd is a valid value (null pointers, zero ids).
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let code = lookup(&mut pwd, buffer.as_mut_ptr(), buffer.len(), &mut result);
        if code == libc::ERANGE && buffer.len() < 1 << 20 {
            buffer.resize(buffer.len() * 2, 0);
            continue;
        }
        if code != 0 {
            return Err(io::Error::from_raw_os_error(code));
        }
        if result.is_null() {
            return Ok(None);
        }
        // SAFETY: on success the strings point into `buffer`, NUL-terminated.
        let text = |ptr: *const libc::c_char| unsafe {
            if ptr.is_null() {
                String::new()
            } else {
                CStr::from_ptr(ptr).to_string_lossy().into_owned()
            }
        };
        return Ok(Some(Account {
            name: text(pwd.pw_name),
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
            home: text(pwd.pw_dir),
        }));
    }
}

/// The id of the group named `name` (or whose number is `name`).
pub(crate) fn group_id(name: &str) -> io::Result<Option<u32>> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(Some(gid));
    }
    let Ok(c_name) = CString::new(name) else {
        return Ok(None);
    };
    let mut buffer = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: an all-zero group is a valid value (null pointers, zero id).
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: `c_name` is NUL-terminated; the other pointers are to live buffers.
        let code = unsafe {
            libc::getgrnam_r(
                c_name.as_ptr(),
                &mut group,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut result,
            )
        };
        if code == libc::ERANGE && buffer.len() < 1 << 20 {
            buffer.resize(buffer.len() * 2, 0);
            continue;
        }
        if code != 0 {
            return Err(io::Error::from_raw_os_error(code));
        }
        return Ok((!result.is_null()).then_some(group.gr_gid));
    }
}

/// Sends `signal` to process `pid` (or, negative, to a process group). A process that
/// is gone already is not an error worth reporting.
pub(crate) fn kill(pid: i32, signal: i32) {
    // 0 and -1 mean "my group" and "everyone"; 1 is init.
    if pid == 0 || pid == -1 || pid == 1 {
        return;
    }
    // SAFETY: kill(2) only sends a signal.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Reaps child `pid` if it has exited; returns whether it did.
pub(crate) fn reap_if_exited(pid: i32) -> bool {
    let mut status = 0;
    // SAFETY: waitpid writes the status to the int we pass.
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) == pid }
}

/// Sets glibc's allocator up for a server whose large buffers come and go: every
/// allocation of 1 MiB or more (a password hash's 19 MiB, a large body) is mapped on
/// its own and given back to the system when freed. By default glibc raises that
/// threshold to the largest block freed so far, after which such blocks are carved
/// from per-thread arenas that keep their pages: a login flood then left hundreds of
/// MiB resident for good.
pub(crate) fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a parameter of the allocator.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
    }
}

/// The Landlock ABI version of the running kernel; 0 when it has no Landlock.
pub(crate) fn landlock_abi() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_long = 1;
    // SAFETY: with a null attribute and the VERSION flag, the call only returns a number.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    version.max(0)
}

/// Gives the memory that the allocator keeps free in its arenas back to the system
/// (glibc keeps what a burst of connections freed, in every arena it touched).
pub(crate) fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns the allocator's own free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Lowers the scheduling priority of the calling thread (Linux keeps a nice value per
/// thread): work on it yields the CPU to every thread of normal priority.
pub(crate) fn lower_this_thread_priority(nice: i32) {
    // SAFETY: gettid has no arguments; setpriority on our own thread id only changes
    // its nice value.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice);
    }
}

/// The machine's host name, if it has a readable one.
pub(crate) fn host_name() -> Option<String> {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length, which is passed.
    let result = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if result != 0 {
        return None;
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    let name = std::str::from_utf8(&buffer[..end]).ok()?.trim();
    (!name.is_empty()).then(|| name.to_owned())
}
