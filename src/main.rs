// mimalloc: the proxy allocates and frees a few small objects per request
// (header maps, request ids, futures); mimalloc's thread-local free lists
// serve them in fewer instructions than glibc's malloc (bench/callgrind.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    portcullis::cli::main()
}
