use clap::Parser;

fn main() {
    clipsteer::tune_runtime();
    let cli = clipsteer::cli::Cli::parse();
    match clipsteer::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {}", clipsteer::error_line(&e));
            std::process::exit(1);
        }
    }
}
