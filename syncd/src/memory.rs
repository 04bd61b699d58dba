//! How a Carnet process takes memory from the system: in small pages.
//!
//! The daemon's allocator (mimalloc) asks the kernel for transparent huge pages on its arenas.
//! Each first touch of such a region then has the kernel zero 2 MiB at once, and the allocator
//! gives parts of them back and touches them again as a sync's memory comes and goes: on the
//! host applying an initial sync, zeroing fresh huge pages was a fifth of its CPU. With small
//! pages the kernel zeroes only what is touched (benches/LOG.md, 2026-12-07 evening).
//!
//! Invariant: once `use_small_pages` returned, no page of this process (and of the processes it
//! starts) is backed by a transparent huge page faulted after that.

/// Asks the kernel not to back this process's memory with transparent huge pages, from now on
/// (`prctl(PR_SET_THP_DISABLE)`: the whole process, kept across `exec`). Call it first in
/// `main`. A kernel that refuses leaves the process as it was, only slower: the error is for
/// the log.
pub fn use_small_pages() -> std::io::Result<()> {
    rustix::thread::disable_transparent_huge_pages(true)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_process_takes_no_transparent_huge_page_once_asked() {
        super::use_small_pages().expect("the kernel takes PR_SET_THP_DISABLE");
        assert!(
            rustix::thread::transparent_huge_pages_are_disabled().expect("PR_GET_THP_DISABLE"),
            "the flag is set for the process"
        );
    }
}
