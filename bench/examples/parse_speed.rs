use shared::model::RowOp;
fn main() {
    let mut lines = String::new();
    for i in 0..2000 {
        lines.push_str(&format!(r#"{{"row":{},"action":"Upsert","type":"User","email":"r0-user{i}@bench.example.com","first_name":"First{i}","last_name":"Last{i}","role":"Learner","department":"Dept {}","groups":["Group A","Group B"],"phone":"+1 555 {i:04}","username":"user{i}"}}"#, i + 2, i % 7));
        lines.push('\n');
    }
    let bytes = lines.into_bytes();
    let _: Vec<RowOp> = shared::wire::parse_jsonl("chunk", &bytes).unwrap();
    let t = std::time::Instant::now();
    for _ in 0..20 {
        let ops: Vec<RowOp> = shared::wire::parse_jsonl("chunk", &bytes).unwrap();
        std::hint::black_box(ops);
    }
    println!("parse: {:?} per 2000-row chunk ({} bytes)", t.elapsed() / 20, bytes.len());
}
