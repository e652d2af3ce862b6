use clap::Parser;

fn main() {
    let cli = clipsteer::cli::Cli::parse();
    match clipsteer::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // One line: the whole context chain, newlines folded.
            let message = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {message}");
            std::process::exit(1);
        }
    }
}
