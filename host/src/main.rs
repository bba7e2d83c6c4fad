//! The `iotrules` command line.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: the decode path makes a dozen small allocations per event, and glibc's malloc
/// cost a tenth of the time per event in profiles. The decode bench uses the same allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            // One line, the whole chain of causes: what failed and why.
            eprintln!("iotrules: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Turns transparent huge pages off for this process. mimalloc marks its memory as wanting
/// them, and where the system leaves huge pages to `madvise` (Debian's default) the kernel's
/// `khugepaged` then refills every 2 MiB range the allocator has partly given back, so after
/// a burst the service's memory grew again on its own, without any work. `scripts/flood 30
/// --quiet 120`: with huge pages, 119 MiB idle, a 170–179 MiB peak and RSS growing for a
/// minute and a half after the flood; without, 58 MiB idle, a 116 MiB peak, and flat after it,
/// at the same rate.
#[cfg(target_os = "linux")]
fn disable_transparent_huge_pages() {
    // SAFETY: `PR_SET_THP_DISABLE` takes no pointers; it only sets a flag of this process.
    // On a kernel without it the call fails and nothing changes, which is harmless.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

#[cfg(not(target_os = "linux"))]
fn disable_transparent_huge_pages() {}
