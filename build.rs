//! Build script: links the system Tesseract (and its image library, Leptonica)
//! for `src/ocr`, which calls Tesseract's C API through hand-written
//! `extern "C"` declarations. Fails the build with a message naming the Debian
//! packages to install when pkg-config cannot find them, instead of leaving a
//! cryptic linker error for later.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // `sqlx::migrate!` embeds the migrations; a new file must rebuild the crate.
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    // (pkg-config name, minimum version, Debian package providing the .pc file)
    let libs = [
        ("tesseract", "4.1", "libtesseract-dev"),
        ("lept", "1.79", "libleptonica-dev"),
    ];
    let mut missing = Vec::new();
    for (name, min, debian) in libs {
        if let Err(err) = pkg_config::Config::new().atleast_version(min).probe(name) {
            missing.push(format!("  - {name} >= {min} (Debian: {debian}): {err}"));
        }
    }
    if !missing.is_empty() {
        eprintln!(
            "\nerror: the OCR module needs the system Tesseract library, found through pkg-config.\n\
             Missing:\n{}\n\
             Install it with:\n  apt-get install -y pkg-config libtesseract-dev libleptonica-dev tesseract-ocr-eng tesseract-ocr-osd\n\
             (the last two ship eng.traineddata and osd.traineddata, needed at run time).\n",
            missing.join("\n")
        );
        std::process::exit(1);
    }
}
