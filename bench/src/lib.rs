//! Synthetic rosters for the benchmarks, and the measurements a child process reports.

use std::io::Write;
use std::path::{Path, PathBuf};

pub const HEADER: [&str; 10] =
    ["Email", "FirstName", "LastName", "Type", "Action", "RoleName", "Department", "Groups", "Phone", "Username"];

/// Row `i` of a synthetic roster: realistic widths (about 120 bytes as CSV), every value valid.
pub fn row(i: usize, action: &str) -> [String; 10] {
    const FIRST: [&str; 8] = ["Ann", "Bob", "Chidi", "Dana", "Eun-ji", "Farah", "Gustavo", "Hiroshi"];
    const LAST: [&str; 8] = ["Okafor", "Smith", "Nguyen", "García", "Kowalski", "Haddad", "Larsen", "Tanaka"];
    [
        format!("user{i:07}@bench.example.com"),
        FIRST[i % 8].to_string(),
        LAST[(i / 8) % 8].to_string(),
        "User".into(),
        action.into(),
        "Learner".into(),
        format!("Department {}", i % 40),
        format!("group-{};group-{}", i % 13, i % 7),
        format!("+1415{:07}", i % 10_000_000),
        format!("u{i:07}"),
    ]
}

pub fn data_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data");
    std::fs::create_dir_all(&dir).expect("bench data dir");
    dir
}

/// `roster-<rows>.csv`, generated once and reused.
pub fn csv_file(rows: usize) -> PathBuf {
    let path = data_dir().join(format!("roster-{rows}.csv"));
    if !path.exists() {
        let tmp = path.with_extension("tmp");
        let mut w = csv::Writer::from_writer(std::io::BufWriter::new(std::fs::File::create(&tmp).expect("create")));
        w.write_record(HEADER).expect("write");
        for i in 0..rows {
            w.write_record(row(i, "Upsert")).expect("write");
        }
        w.into_inner().expect("flush").flush().expect("flush");
        std::fs::rename(&tmp, &path).expect("rename");
    }
    path
}

/// `roster-<rows>.xlsx`, generated once (constant-memory writer, shared strings off as Excel's
/// own large exports often are not: calamine and ingest read both forms).
pub fn xlsx_file(rows: usize) -> PathBuf {
    let path = data_dir().join(format!("roster-{rows}.xlsx"));
    if !path.exists() {
        xlsx_to(&path, rows, "Upsert");
    }
    path
}

/// `roster-<rows>-sst.xlsx`: the same rows with a shared-string table, as Excel itself saves
/// (every distinct text once in `sharedStrings.xml`, which readers load whole).
pub fn xlsx_sst_file(rows: usize) -> PathBuf {
    let path = data_dir().join(format!("roster-{rows}-sst.xlsx"));
    if !path.exists() {
        write_xlsx(&path, rows, "Upsert", true);
    }
    path
}

pub fn xlsx_to(path: &Path, rows: usize, action: &str) {
    write_xlsx(path, rows, action, false)
}

fn write_xlsx(path: &Path, rows: usize, action: &str, shared_strings: bool) {
    let mut wb = rust_xlsxwriter::Workbook::new();
    let ws = if shared_strings { wb.add_worksheet_with_low_memory() } else { wb.add_worksheet_with_constant_memory() };
    let ws = ws.expect("sheet");
    ws.set_name("Roster").expect("name");
    for (c, h) in HEADER.iter().enumerate() {
        ws.write_string(0, c as u16, *h).expect("cell");
    }
    for i in 0..rows {
        for (c, v) in row(i, action).iter().enumerate() {
            ws.write_string(i as u32 + 1, c as u16, v).expect("cell");
        }
    }
    let tmp = path.with_extension("tmp");
    wb.save(&tmp).expect("save");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Peak resident set of this process so far, in bytes (Linux `VmHWM`).
pub fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// `district-<students>.zip`: a OneRoster 1.1 bulk bundle of a district with 20 schools, a teacher
/// and a class for every 25 students, a guardian for every 2 (a quarter of students without
/// email), each student enrolled in one class with its teacher. Generated once and reused.
pub fn oneroster_file(students: usize) -> PathBuf {
    let path = data_dir().join(format!("district-{students}.zip"));
    if path.exists() {
        return path;
    }
    let classes = students.div_ceil(25);
    let mut orgs = String::from("sourcedId,status,dateLastModified,name,type,identifier,parentSourcedId\nd,,,Bench District,district,D,\n");
    for s in 0..20 {
        orgs += &format!("s{s},,,School {s},school,S{s},d\n");
    }
    let mut users = String::from(
        "sourcedId,status,dateLastModified,enabledUser,orgSourcedIds,role,username,userIds,givenName,familyName,middleName,identifier,email,sms,phone,agentSourcedIds,grades,password\n",
    );
    let mut class_file = String::from(
        "sourcedId,status,dateLastModified,title,grades,courseSourcedId,classCode,classType,location,schoolSourcedId,termSourcedIds,subjects,subjectCodes,periods\n",
    );
    let mut enrollments =
        String::from("sourcedId,status,dateLastModified,classSourcedId,schoolSourcedId,userSourcedId,role,primary,beginDate,endDate\n");
    for c in 0..classes {
        let school = c % 20;
        users += &format!("t{c},,,true,s{school},teacher,t{c},,Teacher,Number{c},,T{c},teacher{c}@bench.example.org,,,,,\n");
        class_file += &format!("c{c},,,Class {c},05,course{},C{c},scheduled,Room {},s{school},term,Science,,1\n", c % 40, c % 30);
        enrollments += &format!("et{c},,,c{c},s{school},t{c},teacher,true,,\n");
    }
    for g in 0..students.div_ceil(2) {
        users += &format!(
            "g{g},,,true,s{},guardian,g{g},,Guardian,Number{g},,,guardian{g}@home.example.net,,555-01{:02},,,\n",
            (g * 2 / 25) % 20,
            g % 100
        );
    }
    for i in 0..students {
        let c = i / 25;
        let email = if i % 4 == 3 { String::new() } else { format!("student{i}@students.bench.example.org") };
        users += &format!("st{i},,,true,s{},student,st{i},,Student,Number{i},,S{i},{email},,,g{},05,\n", c % 20, i / 2);
        enrollments += &format!("es{i},,,c{c},s{},st{i},student,false,,\n", c % 20);
    }
    let manifest = "propertyName,value\nmanifest.version,1.0\noneroster.version,1.1\nfile.orgs,bulk\nfile.users,bulk\nfile.classes,bulk\nfile.enrollments,bulk\n";
    let tmp = path.with_extension("tmp");
    let mut w = zip::ZipWriter::new(std::fs::File::create(&tmp).expect("create"));
    for (name, text) in [
        ("manifest.csv", manifest),
        ("orgs.csv", &orgs),
        ("users.csv", &users),
        ("classes.csv", &class_file),
        ("enrollments.csv", &enrollments),
    ] {
        w.start_file(name, zip::write::SimpleFileOptions::default()).expect("zip entry");
        w.write_all(text.as_bytes()).expect("write");
    }
    w.finish().expect("zip");
    std::fs::rename(&tmp, &path).expect("rename");
    path
}

/// CPU time a process has used, in nanoseconds: user and system time of `/proc/<pid>/stat`,
/// which counts threads that have ended too (LocalStack starts a thread per request: a sum over
/// the live threads missed theirs). Its unit is the clock tick (10 ms): over the many timed
/// windows of a table the rounding averages out. `None` if the process is not there.
pub fn cpu_ns(pid: &str) -> Option<u64> {
    static TICK_NS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let tick_ns = *TICK_NS.get_or_init(|| {
        let out = std::process::Command::new("getconf").arg("CLK_TCK").output().ok();
        let hz = out.and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse::<u64>().ok()).filter(|&hz| hz > 0).unwrap_or(100);
        1_000_000_000 / hz
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (which may hold spaces and parentheses): state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks * tick_ns)
}

/// The local stack's processes this checkout started (`scripts/stack.sh`): (name, pid).
pub fn stack_pids() -> Vec<(&'static str, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.local/pids");
    ["dynamodb", "localstack"]
        .into_iter()
        .filter_map(|name| {
            let pid = std::fs::read_to_string(dir.join(format!("{name}.pid"))).ok()?.trim().to_string();
            cpu_ns(&pid).map(|_| (name, pid))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::cpu_ns;

    /// A thread's CPU stays counted once it has ended (LocalStack's per-request threads do).
    #[test]
    fn cpu_of_a_thread_that_has_ended_is_still_counted() {
        let before = cpu_ns("self").expect("this process");
        // Busy until the thread itself has used 200 ms of CPU, however loaded the machine is.
        std::thread::spawn(|| {
            while cpu_ns("thread-self").expect("this thread") < 200_000_000 {
                std::hint::black_box(0u64);
            }
        })
        .join()
        .unwrap();
        let spent = cpu_ns("self").expect("this process") - before;
        assert!(spent >= 150_000_000, "a 200 ms busy thread counted as {spent} ns");
        assert_eq!(cpu_ns("no-such-process"), None);
    }
}
