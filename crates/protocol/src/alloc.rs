//! A global allocator that survives hostile array counts.
//!
//! `kafka-protocol` 0.18 passes an array count read from the wire straight to
//! `Vec::with_capacity`, so a 30-byte request claiming 2^31 elements asks the allocator for
//! hundreds of GiB before it notices that the bytes are missing. The system allocator says
//! no, and Rust's answer to a failed allocation is to abort the whole process: one client
//! could stop every shard.
//!
//! [`GuardedAlloc`] serves every allocation of [`HUGE_BYTES`] or more with an anonymous
//! `MAP_NORESERVE` mapping instead. Such a mapping reserves address space only: no page
//! exists until it is written, and a decoder that was lied to writes at most as many
//! elements as the frame really holds before it fails with "not enough bytes" and frees
//! the mapping. Memory stays bounded by the frame size (itself bounded by
//! `--frame-bytes-max`), the request gets its error, and the connection alone is closed.
//! Nothing legitimate in the broker allocates a GiB in one piece (frames are at most
//! 100 MiB by default), so ordinary allocations never take this path.
//!
//! Limits: with `vm.overcommit_memory=2` (strict accounting) the kernel ignores
//! `MAP_NORESERVE` and such a mapping fails like any other allocation; the default
//! heuristic mode (0) and mode 1 are fine.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations of at least this many bytes are served by `MAP_NORESERVE` mappings.
pub const HUGE_BYTES: usize = 1 << 30;

/// The process's allocator: [`System`], except for huge allocations (see the module docs).
pub struct GuardedAlloc;

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page > 0 {
        page as usize
    } else {
        4096
    }
}

fn is_huge(layout: &Layout) -> bool {
    layout.size() >= HUGE_BYTES && layout.align() <= page_size()
}

unsafe fn map(size: usize) -> *mut u8 {
    let p = libc::mmap(
        std::ptr::null_mut(),
        size,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        -1,
        0,
    );
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: huge blocks come from mmap (page aligned, which covers any alignment up to the page
// size, checked by `is_huge`) and go back with munmap of the same size; every other block is
// the system allocator's. The choice depends only on the layout, which the caller must pass
// unchanged to `dealloc`, so a block is always returned to where it came from.
unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            map(layout.size())
        } else {
            System.alloc(layout)
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            // Fresh anonymous pages read as zeros.
            map(layout.size())
        } else {
            System.alloc_zeroed(layout)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_huge(&layout) {
            libc::munmap(ptr.cast(), layout.size());
        } else {
            System.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY (caller): new_size is non-zero and fits isize when rounded to the alignment.
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        if !is_huge(&layout) && !is_huge(&new_layout) {
            return System.realloc(ptr, layout, new_size);
        }
        let new = self.alloc(new_layout);
        if !new.is_null() {
            std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            self.dealloc(ptr, layout);
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_reservation_costs_only_the_pages_written() {
        let layout = Layout::from_size_align(64 << 30, 8).unwrap();
        // SAFETY: the block is used within its size and freed with its layout.
        unsafe {
            let p = GuardedAlloc.alloc(layout);
            assert!(!p.is_null(), "64 GiB NORESERVE mapping refused");
            p.write_bytes(7, 4096);
            assert_eq!(*p.add(4095), 7);
            let q = GuardedAlloc.realloc(p, layout, 4096);
            assert_eq!(*q.add(4095), 7);
            GuardedAlloc.dealloc(q, Layout::from_size_align(4096, 8).unwrap());
        }
    }
}
