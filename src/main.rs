fn main() -> std::process::ExitCode {
    elb_drain::cli::main()
}
