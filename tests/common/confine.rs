//! Confining an agent the way a locked-down container does, for the census fallback tests: the
//! `NETLINK_SOCK_DIAG` socket refused by a seccomp filter, and optionally `/proc/net` hidden too; or
//! only the subscription to socket-destroy notifications refused, so that the agent polls through
//! netlink.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// How `cmd` is confined: sock_diag refused (seccomp), and optionally `/proc/net` hidden too (an empty
/// tmpfs over this process's `/proc/PID/net`, in its own mount namespace); or sock_diag allowed but
/// its multicast groups refused.
#[derive(Clone, Copy, PartialEq)]
#[allow(clippy::enum_variant_names)] // each names what the process is denied
pub enum Confine {
    NoNetlink,
    NoNetlinkNoProc,
    /// `bind(2)` of a netlink socket refused with EPERM, which is what the kernel answers a process
    /// it does not let join a netlink multicast group: the socket-destroy subscription fails and the
    /// drain polls, while the netlink census (which never binds: its first send autobinds) works.
    /// The filter cannot read the address, so glibc's `getifaddrs` (a NETLINK_ROUTE socket it binds
    /// with no groups) fails too: the agent cannot list its interfaces and warns that the member
    /// address is on none, which changes nothing in a drain.
    NoDestroyEvents,
}

/// The `AUDIT_ARCH_*` the filter checks; on another architecture no filter is written, and confining
/// fails (so [`can_confine`] says no and the test skips).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: Option<u32> = Some(0xC000_003E);
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: Option<u32> = Some(0xC000_00B7);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const AUDIT_ARCH: Option<u32> = None;

/// A seccomp filter answering EACCES to `socket(AF_NETLINK, _, NETLINK_SOCK_DIAG)`, as a locked-down
/// container does; every other call (netlink route included: sysinfo lists interfaces with it) passes.
/// With `how` [`Confine::NoDestroyEvents`], EPERM to `bind(fd, addr, sizeof(struct sockaddr_nl))`
/// instead, and nothing else.
fn filter(how: Confine) -> Vec<libc::sock_filter> {
    let Some(arch) = AUDIT_ARCH else {
        return Vec::new();
    };
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq_else = |k: u32, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt: 0,
        jf,
        k,
    };
    let load = |offset: u32| stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset);
    // seccomp_data: nr at 0, arch at 4, args[i] at 16 + 8 i (low half first on little endian).
    if how == Confine::NoDestroyEvents {
        return vec![
            load(4),
            jeq_else(arch, 5),
            load(0),
            jeq_else(libc::SYS_bind as u32, 3),
            load(32),
            jeq_else(std::mem::size_of::<libc::sockaddr_nl>() as u32, 1),
            stmt(
                libc::BPF_RET | libc::BPF_K,
                libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
            ),
            stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
        ];
    }
    vec![
        load(4),
        jeq_else(arch, 7),
        load(0),
        jeq_else(libc::SYS_socket as u32, 5),
        load(16),
        jeq_else(libc::AF_NETLINK as u32, 3),
        load(32),
        jeq_else(libc::NETLINK_SOCK_DIAG as u32, 1),
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EACCES as u32,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ]
}

pub fn confine(cmd: &mut Command, how: Confine) {
    let filter = filter(how);
    // Everything the child needs is made here: between fork and exec only system calls are safe.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let uid_map = format!("0 {uid} 1\n");
    let gid_map = format!("0 {gid} 1\n");
    let path = |s: &str| std::ffi::CString::new(s).unwrap();
    let (root, net, tmpfs, none) = (
        path("/"),
        path("/proc/self/net"),
        path("tmpfs"),
        path("none"),
    );
    let (setgroups, uid_file, gid_file) = (
        path("/proc/self/setgroups"),
        path("/proc/self/uid_map"),
        path("/proc/self/gid_map"),
    );
    // SAFETY: the closure makes system calls only, on data prepared above; it runs in the forked child.
    unsafe {
        cmd.pre_exec(move || {
            let fail = || Err(std::io::Error::last_os_error());
            let write = |file: &std::ffi::CString, text: &[u8]| {
                let fd = libc::open(file.as_ptr(), libc::O_WRONLY);
                let ok = fd >= 0 && libc::write(fd, text.as_ptr().cast(), text.len()) >= 0;
                if fd >= 0 {
                    libc::close(fd);
                }
                ok
            };
            if how == Confine::NoNetlinkNoProc {
                // As root a mount namespace is enough; otherwise a user namespace gives the right.
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0 {
                        return fail();
                    }
                    if !write(&setgroups, b"deny")
                        || !write(&uid_file, uid_map.as_bytes())
                        || !write(&gid_file, gid_map.as_bytes())
                    {
                        return fail();
                    }
                }
                // Private first, so nothing of this reaches the machine's own mount table.
                if libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                    || libc::mount(
                        none.as_ptr(),
                        net.as_ptr(),
                        tmpfs.as_ptr(),
                        0,
                        std::ptr::null(),
                    ) != 0
                {
                    return fail();
                }
            }
            let program = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &program as *const libc::sock_fprog,
                ) != 0
            {
                return fail();
            }
            Ok(())
        });
    }
}

/// Whether this machine lets a test confine a process that way (namespaces may be off for non-root).
pub fn can_confine(how: Confine) -> bool {
    let mut probe = Command::new("true");
    confine(&mut probe, how);
    match probe.status() {
        Ok(s) if s.success() => true,
        other => {
            eprintln!("SKIPPED part of this test: cannot confine a process here ({other:?})");
            false
        }
    }
}
