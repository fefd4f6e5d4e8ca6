//! A network namespace of the calling thread's own, with its loopback up.
//!
//! A namespace belongs to a thread, and everything that thread creates afterwards lives in it: the
//! sockets it opens (listeners, connections, a census), the simulator whose listeners it binds, the
//! agents it spawns. So a test that runs each drain in a thread of its own gives each its own view of
//! the socket table: drains running side by side do not count each other's sockets, ports never
//! clash, and nothing is left in the machine's namespace for the tests after it. (The namespaces
//! still share the machine's established hash, which every census walks whole, skipping the other
//! namespaces' sockets: a namespace gets a hash of its own only when made from one whose
//! `tcp_child_ehash_entries` asks for it, as the detection benchmark does.) Packets stay on the
//! namespace's loopback (the project's rule: loopback, or namespaces the test made itself).

use std::io;

/// Moves the calling thread into a new network namespace and brings its `lo` up (127.0.0.1 and ::1).
/// Needs CAP_SYS_ADMIN (root); `Err` otherwise, and the thread stays where it was.
pub fn enter_own() -> io::Result<()> {
    // SAFETY: unshare(2) changes only the calling thread's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    loopback_up()
}

fn loopback_up() -> io::Result<()> {
    // SAFETY: a datagram socket of our own for the interface ioctls; ifreq is zeroed and then filled
    // with the name and the flags the kernel read; the fd is closed on every path.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr);
        if rc == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr);
        }
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 { Err(err) } else { Ok(()) }
    }
}
