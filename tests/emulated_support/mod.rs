//! spectra's CUDA C run on the CPU through HIP-CPU (github ROCm/HIP-CPU, fetched into data/hip-cpu
//! by scripts/get-hip-cpu.sh): each module's source, exactly as NVRTC is given it
//! (`spectra::kernels::cuda::MODULES`), is compiled with g++ behind `cuda_on_hip_cpu.hpp` (the CUDA
//! spellings the kernels use, and a 32-thread warp) and in front of `launch.hpp` (a generic launcher
//! that checks each argument against the kernel's signature and guards each buffer). Every launch runs
//! in its own process, so that a kernel that breaks a barrier or writes out of bounds fails its test
//! with a message instead of taking the test binary down.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use spectra::core::ops::grid::Grid;

/// No launch of the tests takes a second; a hung one is stopped after this.
const LAUNCH_LIMIT: Duration = Duration::from_secs(120);

/// One module compiled for the CPU.
pub struct Module {
    file: &'static str,
    binary: PathBuf,
}

/// An element of a kernel argument, as the kernel's C type lays it out.
pub trait Element: Copy {
    const SIZE: usize;
    fn put(self, into: &mut Vec<u8>);
    fn get(bytes: &[u8]) -> Self;
}

macro_rules! element {
    ($($t:ty),*) => {$(
        impl Element for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn put(self, into: &mut Vec<u8>) {
                into.extend_from_slice(&self.to_le_bytes());
            }
            fn get(bytes: &[u8]) -> Self {
                <$t>::from_le_bytes(bytes.try_into().unwrap())
            }
        }
    )*};
}
element!(f32, f64, i32, u32, u64, u16);

/// A kernel argument: the contents of a buffer (a pointer parameter), or a value.
pub enum Arg {
    Buffer(Vec<u8>),
    Value(Vec<u8>),
}

/// A buffer holding `values`.
pub fn buffer<T: Element>(values: &[T]) -> Arg {
    let mut bytes = Vec::with_capacity(values.len() * T::SIZE);
    values.iter().for_each(|v| v.put(&mut bytes));
    Arg::Buffer(bytes)
}

/// A buffer of `n` zeros of `T`.
pub fn zeros<T: Element>(n: usize) -> Arg {
    Arg::Buffer(vec![0; n * T::SIZE])
}

/// A value argument.
pub fn value<T: Element>(x: T) -> Arg {
    let mut bytes = Vec::with_capacity(T::SIZE);
    x.put(&mut bytes);
    Arg::Value(bytes)
}

/// The buffers after a launch, by argument position.
pub struct Launched {
    buffers: Vec<Option<Vec<u8>>>,
}

impl Launched {
    /// The contents of the buffer passed as argument `position`.
    pub fn buffer<T: Element>(&self, position: usize) -> Vec<T> {
        let bytes = self.buffers[position]
            .as_ref()
            .unwrap_or_else(|| panic!("argument {position} is not a buffer"));
        bytes.chunks_exact(T::SIZE).map(T::get).collect()
    }
}

/// Where HIP-CPU is: `SPECTRA_HIP_CPU`, or data/hip-cpu.
fn hip_cpu() -> PathBuf {
    std::env::var_os("SPECTRA_HIP_CPU")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("data/hip-cpu"))
}

fn compiler() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "g++".into())
}

/// g++ flags: C++17 as HIP-CPU needs; no FMA contraction, so that each `__fmul_rn`-style operation
/// is the one correctly rounded operation the CUDA intrinsic is; TBB's parallel backend off, so
/// that blocks run one after another and no TBB is needed.
const FLAGS: [&str; 5] = [
    "-std=c++17",
    "-O1",
    "-ffp-contract=off",
    "-D_GLIBCXX_USE_TBB_PAR_BACKEND=0",
    "-pthread",
];

impl Module {
    /// The module `file` (e.g. "adamw.cu") built for the CPU with a launcher for each of
    /// `kernels`, or `None` after saying why the emulation cannot run here.
    pub fn compile(file: &'static str, kernels: &[&str]) -> Option<Module> {
        let hip = hip_cpu();
        if !hip.join("include/hip/hip_runtime.h").is_file() {
            eprintln!(
                "{file}: emulation skipped, HIP-CPU is not in {}: run scripts/get-hip-cpu.sh",
                hip.display()
            );
            return None;
        }
        if Command::new(compiler()).arg("--version").output().is_err() {
            eprintln!(
                "{file}: emulation skipped, no C++ compiler ({}; set CXX)",
                compiler()
            );
            return None;
        }
        let source = spectra::kernels::cuda::MODULES
            .iter()
            .find(|(f, _)| *f == file)
            .unwrap_or_else(|| panic!("no CUDA module {file}"))
            .1;
        let table: Vec<String> = kernels
            .iter()
            .map(|k| format!("{{\"{k}\", spectra_emulation::launcher({k})}}"))
            .collect();
        let program = format!(
            "#include \"cuda_on_hip_cpu.hpp\"\n{source}\n#include \"launch.hpp\"\n\
             int main() {{ return spectra_emulation::serve({{{}}}); }}\n",
            table.join(", ")
        );
        let support = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/emulated_support");
        let mut key = DefaultHasher::new();
        program.hash(&mut key);
        FLAGS.hash(&mut key);
        // The compiler is part of what was built.
        Command::new(compiler())
            .arg("--version")
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default()
            .hash(&mut key);
        for header in ["cuda_on_hip_cpu.hpp", "launch.hpp"] {
            std::fs::read(support.join(header)).unwrap().hash(&mut key);
        }
        std::fs::read_to_string(hip.join("COMMIT"))
            .unwrap_or_default()
            .hash(&mut key);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("emulated-kernels");
        std::fs::create_dir_all(&dir).unwrap();
        let stem = file.trim_end_matches(".cu");
        let binary = dir.join(format!("{stem}-{:016x}", key.finish()));
        if !binary.is_file() {
            let started = Instant::now();
            // Unique per compile, so that two compiles of one module never share a file.
            static COMPILES: std::sync::atomic::AtomicUsize =
                std::sync::atomic::AtomicUsize::new(0);
            let unique = format!(
                "{}-{}",
                std::process::id(),
                COMPILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            let cpp = dir.join(format!("{stem}-{unique}.cpp"));
            std::fs::write(&cpp, &program).unwrap();
            let partial = binary.with_extension(format!("{unique}.partial"));
            let output = Command::new(compiler())
                .args(FLAGS)
                .arg("-I")
                .arg(hip.join("include"))
                .arg("-I")
                .arg(&support)
                .arg(&cpp)
                .arg("-o")
                .arg(&partial)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{file} does not compile for the CPU:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            // A rename, so that a test binary running beside this one never runs half a file.
            std::fs::rename(&partial, &binary).unwrap();
            std::fs::remove_file(&cpp).unwrap();
            eprintln!(
                "{file}: compiled for the CPU in {:.1}s",
                started.elapsed().as_secs_f64()
            );
        }
        Some(Module { file, binary })
    }

    /// Runs `kernel` on `grid` with `args` and returns the buffers after it; panics with what the
    /// launcher said when the launch fails.
    pub fn launch(&self, kernel: &str, grid: Grid, args: &[Arg]) -> Launched {
        let mut request = Vec::new();
        (kernel.len() as u32).put(&mut request);
        request.extend_from_slice(kernel.as_bytes());
        grid.blocks.put(&mut request);
        grid.threads.put(&mut request);
        (args.len() as u32).put(&mut request);
        for arg in args {
            let (Arg::Buffer(bytes) | Arg::Value(bytes)) = arg;
            (bytes.len() as u64).put(&mut request);
            request.extend_from_slice(bytes);
        }
        let mut child = Command::new(&self.binary)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(&request));
        let mut stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut reply = Vec::new();
            stdout.read_to_end(&mut reply).map(|_| reply)
        });
        // Drained as it comes, so that a chatty child never blocks on a full pipe.
        let mut stderr = child.stderr.take().unwrap();
        let complaints = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > LAUNCH_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                let said = complaints.join().unwrap_or_default();
                panic!(
                    "{}: {kernel} on {grid:?} ran past {LAUNCH_LIMIT:?}: {said}",
                    self.file
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let stderr = complaints.join().unwrap_or_default();
        assert!(
            status.success(),
            "{}: {kernel} on {grid:?} failed ({status}): {stderr}",
            self.file
        );
        writer.join().unwrap().unwrap();
        let reply = reader.join().unwrap().unwrap();
        let mut at = 0;
        let buffers = args
            .iter()
            .map(|arg| {
                matches!(arg, Arg::Buffer(_)).then(|| {
                    let size = u64::get(&reply[at..at + 8]) as usize;
                    at += 8 + size;
                    reply[at - size..at].to_vec()
                })
            })
            .collect();
        assert_eq!(at, reply.len(), "{}: {kernel}: reply length", self.file);
        Launched { buffers }
    }
}
