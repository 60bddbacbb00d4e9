use rejuv_sim::traces::{generate, Draw, Family};
fn main() {
    let t = generate(Family::BatchSpikes, 1000030, Draw::HeldBack);
    println!("{:?}", t.values[..20].iter().map(|v| v / t.capacity).collect::<Vec<_>>());
}
