//! Names the target this build is for, which an artifact's name carries.
fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_string());
    println!("cargo:rustc-env=CAIRN_TARGET={target}");
}
