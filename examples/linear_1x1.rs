//! The tutorial's exact case: `torch.nn.Linear(1, 1)`, data `zeros(1, 1)`, target `zeros(1)`,
//! shared across alice and bob with a crypto provider; encrypted argmax/eq/sum; only the
//! accuracy is revealed to the model owner.

fn main() {
    match secure_serving::local::demo(engine::BackendKind::Cpu, engine::TransportKind::Channels) {
        Ok(r) => assert_eq!(
            r.correct,
            Some(1),
            "the tutorial's single input is classified correctly"
        ),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
