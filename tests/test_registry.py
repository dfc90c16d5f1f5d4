"""The registries: every option declared once in OPTIONS, every action in ACTIONS, and
the parser, the API's validation, OpenAPI, the web page's list and README derived from
them."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
from conftest import ROOT

import dicompressor as dp


def cli_error(*argv: str) -> tuple[int, str]:
    """Run main() in this process; return (exit code, the last line on stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = dp.main(list(argv))
    lines = err.getvalue().strip().splitlines()
    return code, lines[-1] if lines else ""


def api_error(action: str, options: dict[str, object], tmp_path: Path) -> str:
    """Return the 400 message the API gives for a process request."""
    with pytest.raises(dp.HTTPError) as caught:
        dp.process_request({"action": action, "options": options}, tmp_path)
    assert caught.value.status == 400
    return caught.value.message


class TestDeclarations:
    """The tables themselves."""

    def test_every_option_names_real_actions(self) -> None:
        for option in dp.OPTIONS.values():
            assert option.kind in dp.OPTION_KINDS, option.name
            assert set(option.actions) <= set(dp.ACTIONS), option.name
            assert bool(option.actions) == (option.scope == dp.ACTION), option.name
            assert option.group in dp.OPTION_GROUPS, option.name
            for other in option.conflicts:
                assert option.name in dp.OPTIONS[other].conflicts, (option.name, other)

    def test_action_flag_values_are_options_or_params(self) -> None:
        for spec in dp.ACTIONS.values():
            if spec.flag_value == "params":
                assert spec.params
            elif spec.flag_value is not None:
                assert dp.OPTIONS[spec.flag_value] in spec.options
            for variant in spec.variants:  # a variant flag sets options of its action
                assert variant.sets
                for name, value in variant.sets:
                    option = dp.OPTIONS[name]
                    assert option in spec.options and option.api, (variant.flag, name)
                    dp.check_value(option, value)
            assert spec.takes in (dp.FILES, dp.FOLDER, dp.TREE)
            assert spec.result in (dp.WROTE, dp.RECORDS, dp.COUNTS)

    def test_options_fields_follow_the_registry(self) -> None:
        options = dp.Options()
        for option in dp.OPTIONS.values():
            if option.scope in (dp.ACTION, dp.COMMON):
                assert getattr(options, option.name) == option.default, option.name
            else:
                assert not hasattr(options, option.name), option.name

    def test_parser_has_exactly_the_registered_flags(self) -> None:
        parser = dp.build_parser()
        flags = {s for a in parser._actions for s in a.option_strings} - {"-h", "--help"}
        wanted = set()
        for spec in dp.ACTIONS.values():
            wanted |= {spec.flag, spec.replace_flag} - {None}
            wanted |= {v.flag for v in spec.variants}
        for option in dp.OPTIONS.values():
            if option.cli:
                wanted |= {option.short, option.flag} - {None}
        assert flags == wanted

    def test_no_option_table_left_in_the_code(self) -> None:
        source = (ROOT / "dicompressor.py").read_text()
        for name in ("ACTION_OPTIONS", "_option_value", "export_images", "export_jpg"):
            assert not re.search(rf"\b{name}\b", source), name


class TestOneValidation:
    """The CLI and the API refuse the same values with the same words."""

    CASES = [
        ("compress_lossy", ["-z"], "ratio", "0.5", 0.5, "must be 1 or more, not 0.5"),
        ("compress_lossy", ["-z"], "psnr", "0", 0, "must be positive, not 0"),
        ("compress_lossy", ["-z"], "ratio", "ten", "ten", "must be a number, not 'ten'"),
        ("export_video", ["-E"], "fps", "-2", -2, "must be positive, not -2"),
        ("export_png", ["-I", "png"], "window", "40,0", "40,0", "width must be positive, not 0"),
        ("export_png", ["-I", "png"], "png_bits", "12", 12, "must be one of 8, 16, not 12"),
        ("compress_lossless", ["-x"], "codec", "zip", "zip", "unknown codec 'zip': {} takes"),
        ("anonymize", ["-a", "{params}"], "profile", "strict", "strict", "unknown profile"),
        ("headers", ["-t"], "format", "xml", "xml", "unknown header format 'xml'"),
    ]

    @pytest.mark.parametrize(("action", "flags", "name", "text", "value", "words"), CASES)
    def test_same_message(
        self,
        tmp_path: Path,
        action: str,
        flags: list[str],
        name: str,
        text: str,
        value: object,
        words: str,
    ) -> None:
        option = dp.OPTIONS[name]
        params = tmp_path / "params.txt"
        params.write_text("PatientID=X\n")
        argv = [f.format(params=params) for f in flags]
        code, line = cli_error(*argv, f"{option.flag}={text}", "-f", str(tmp_path))
        assert code == dp.EXIT_USAGE
        cli_message = line.removeprefix("dicompressor: error: ")
        api_message = api_error(action, {name: value}, tmp_path)
        # one message, each front end naming the option its own way
        assert api_message.replace("options." + name, option.flag).replace('"', "'") == (
            cli_message
        )
        assert words.format(option.flag) in cli_message

    def test_conflicts(self, tmp_path: Path) -> None:
        code, line = cli_error("-z", "--ratio", "5", "--psnr", "40", "-f", str(tmp_path))
        assert (code, line) == (2, "dicompressor: error: give --ratio or --psnr, not both")
        message = api_error("compress_lossy", {"ratio": 5, "psnr": 40}, tmp_path)
        assert message == "give options.ratio or options.psnr, not both"

    def test_option_of_another_action(self, tmp_path: Path) -> None:
        code, line = cli_error("-s", "--ratio", "5", "-f", str(tmp_path))
        assert code == dp.EXIT_USAGE
        assert line == "dicompressor: error: unknown option --ratio for split: it takes none"
        message = api_error("split", {"ratio": 5}, tmp_path)
        assert message == "unknown option 'ratio' for split: it takes none"
        code, line = cli_error("-j", "--ratio", "5", "-f", str(tmp_path))
        assert line == (
            "dicompressor: error: unknown option --ratio for merge: it takes --split-at-gaps"
        )

    def test_server_setting_without_serve(self, tmp_path: Path) -> None:
        code, line = cli_error("-j", "--port", "8001", "-f", str(tmp_path))
        assert (code, line) == (2, "dicompressor: error: --port is a setting of --serve")

    def test_library_callers_get_the_same_check(self, tmp_path: Path) -> None:
        with pytest.raises(dp.DicomPressorError, match=r"^--ratio must be 1 or more, not 0\.5$"):
            dp.compress_lossy([], None, dp.Options(ratio=0.5))

    def test_flag_value_is_checked_as_its_option(self, tmp_path: Path) -> None:
        code, line = cli_error("-I", "gif", "-f", str(tmp_path))
        assert code == dp.EXIT_USAGE
        assert line == (
            "dicompressor: error: unknown image format 'gif': -I takes one of png, jpg, bmp, "
            "tiff, jp2 (also jpeg, tif, jpeg2000; upper or lower case)"
        )
        message = api_error("export_png", {"image_format": "gif"}, tmp_path)
        assert message == line.removeprefix("dicompressor: error: ").replace(
            "-I takes", "options.image_format takes"
        )

    def test_variant_flag_sets_its_options(self) -> None:
        args = dp.build_parser().parse_args(["-i", "TIF", "-f", "x"])
        given = dp.cli_values(args)
        options = dp.cli_options(dp.ACTIONS["export_png"], args, given)
        assert (options.image_format, options.annotate) == ("tiff", True)
        args = dp.build_parser().parse_args(["-e", "-f", "x"])
        options = dp.cli_options(dp.ACTIONS["export_video"], args, dp.cli_values(args))
        assert options.annotate is True
        args = dp.build_parser().parse_args(["-E", "-f", "x"])
        options = dp.cli_options(dp.ACTIONS["export_video"], args, dp.cli_values(args))
        assert options.annotate is False


class TestChoiceSpellings:
    """A choice's aliases and case, declared in its OptionSpec, for every caller alike."""

    OPTION = dp.OptionSpec(
        "shade",
        "choice",
        "a colour",
        choices=("red", "Blue"),
        aliases={"crimson": "red"},
        ignore_case=True,
    )

    @pytest.mark.parametrize(
        ("given", "wanted"),
        [("red", "red"), ("RED", "red"), ("Crimson", "red"), ("blue", "Blue"), ("BLUE", "Blue")],
    )
    def test_canonical(self, given: str, wanted: str) -> None:
        assert self.OPTION.canonical(given) == wanted
        assert dp.parse_option(self.OPTION, given) == wanted

    def test_unknown_names_the_spellings(self) -> None:
        with pytest.raises(dp.UsageError) as caught:
            dp.parse_option(self.OPTION, "Green")
        assert caught.value.message == (
            "unknown shade 'Green': --shade takes one of red, Blue (also crimson; upper or "
            "lower case)"
        )

    def test_without_aliases_case_matters(self) -> None:
        option = dp.OPTIONS["format"]
        assert not option.aliases and not option.ignore_case
        with pytest.raises(dp.UsageError, match="unknown header format 'JSON'"):
            dp.parse_option(option, "JSON")

    @pytest.mark.parametrize(
        ("given", "wanted"),
        [("jpeg", "jpg"), ("JPG", "jpg"), ("Tif", "tiff"), ("JPEG2000", "jp2"), ("BMP", "bmp")],
    )
    def test_options_hold_the_choice(self, given: str, wanted: str, tmp_path: Path) -> None:
        assert dp.Options(image_format=given).image_format == wanted  # library callers
        assert dp.parse_option(dp.OPTIONS["image_format"], given) == wanted  # CLI
        options = dp.action_options(  # the API: converted by parse_option, then checked
            dp.ACTIONS["export_png"],
            {"image_format": dp.parse_option(dp.OPTIONS["image_format"], given, dp.api_label)},
            dp.api_label,
        )
        assert options.image_format == wanted

    def test_openapi_names_the_spellings(self) -> None:
        schemas = dp.openapi_document("http://127.0.0.1:8000")["components"]["schemas"]
        options = schemas["Process_export_png"]["properties"]["options"]["properties"]
        schema = options["image_format"]
        assert schema["enum"] == ["png", "jpg", "bmp", "tiff", "jp2"]
        assert schema["description"].endswith("(also jpeg, tif, jpeg2000; upper or lower case)")
        assert options["annotate"]["type"] == "boolean"

    def test_server_options_reach_the_config(self) -> None:
        args = dp.build_parser().parse_args(
            ["--serve", "--max-upload-mb", "2", "--rate-limit", "0", "--api-key", "k1"]
        )
        dp.cli_values(args)
        config = dp.server_config(args)
        assert config.max_upload_bytes == 2 * 1024 * 1024
        assert config.rate_limit_per_min == 0
        assert config.api_keys == ("k1",)
        assert config.session_ttl_s == dp.DEFAULT_SESSION_TTL_S


class TestDerived:
    """OpenAPI and README come from the registries."""

    def test_openapi_schema_per_action(self) -> None:
        document = dp.openapi_document("http://127.0.0.1:8000")
        schemas = document["components"]["schemas"]
        mapping = schemas["ProcessRequest"]["discriminator"]["mapping"]
        assert set(mapping) == set(dp.ACTIONS)
        for name, spec in dp.ACTIONS.items():
            schema = schemas[f"Process_{name}"]
            properties = schema["properties"]["options"]["properties"]
            assert list(properties) == [o.name for o in spec.options if o.api]
            assert ("params" in schema["properties"]) == spec.params
        ratio = schemas["Process_compress_lossy"]["properties"]["options"]["properties"]["ratio"]
        assert (ratio["type"], ratio["minimum"]) == ("number", 1)
        psnr = schemas["Process_compress_lossy"]["properties"]["options"]["properties"]["psnr"]
        assert psnr["exclusiveMinimum"] == 0

    def test_readme_flag_table(self) -> None:
        readme = (ROOT / "README.md").read_text()
        match = re.search(r"<!-- flag-table:.*?-->\n(.*?)<!-- end flag-table -->", readme, re.S)
        assert match, "README.md has no flag table between its markers"
        assert match.group(1) == dp.flag_table(), (
            "README's flag table is out of date: replace it with the output of "
            "python3 -c 'import dicompressor; print(dicompressor.flag_table(), end=\"\")'"
        )


class TestOnePlacementRule:
    """Every action names its outputs by one rule: folder fallback, stem, in place."""

    @pytest.mark.parametrize("name", ["scan.dcm", "scan.DICOM", "scan.dic", "scan"])
    def test_same_stem_in_every_action(self, name: str, tmp_path: Path) -> None:
        import synth

        source = synth.make_series(tmp_path / "made", n=1, rows=32, cols=32)[0]
        folder = tmp_path / "job"
        folder.mkdir()
        path = folder / name
        path.write_bytes(source.read_bytes())
        wanted = {
            ("-x", "--codec", "rle"): "scan_rle.dcm",
            ("-t",): "scan.txt",
            ("-I", "png"): "scan.png",
        }
        for flags, output in wanted.items():
            code, _ = cli_error(*flags, "-f", str(path), "--quiet", "--jobs", "1")
            assert code == 0, flags
            assert (folder / output).is_file(), (flags, sorted(p.name for p in folder.iterdir()))
        params = tmp_path / "params.txt"
        params.write_text("PatientID=X\n")
        assert cli_error("-a", str(params), "-f", str(path), "--quiet")[0] == 0
        assert (folder / "scan_anon.dcm").is_file()

    def test_output_path(self, tmp_path: Path) -> None:
        source = tmp_path / "in" / "a.dcm"
        assert dp.output_path(source, None, suffix="_x") == tmp_path / "in" / "a_x.dcm"
        assert dp.output_path(source, tmp_path / "o", extension=".txt") == tmp_path / "o" / "a.txt"
        assert dp.output_path(source, tmp_path / "o", suffix="_x", in_place=True) == source
        assert dp.output_folder(tmp_path / "in", None) == tmp_path


class TestGuarded:
    """One guard per input: whatever fails, fails that input alone, in one line."""

    def test_kinds_of_failure(self, tmp_path: Path) -> None:
        path = tmp_path / "a.dcm"

        def expected(p: Path) -> dp.FileOutcome:
            raise dp.DicomPressorError("no (7FE0,0010) Pixel Data")

        def disk(p: Path) -> dp.FileOutcome:
            raise OSError(28, "No space left on device", str(tmp_path / "a_anon.dcm"))

        def bug(p: Path) -> dp.FileOutcome:
            raise TypeError("unsupported operand\nsecond line")

        outcomes = [dp.guarded(f, path, doing="anonymize") for f in (expected, disk, bug)]
        assert [o.status for o in outcomes] == [dp.FAILED] * 3
        assert [o.message for o in outcomes] == [
            "no (7FE0,0010) Pixel Data",
            "cannot anonymize: No space left on device (a_anon.dcm)",
            "cannot anonymize: TypeError: unsupported operand second line",
        ]
        with pytest.raises(KeyboardInterrupt):
            dp.guarded(lambda p: (_ for _ in ()).throw(KeyboardInterrupt()), path, doing="x")

    def test_result_records_outcomes(self, tmp_path: Path) -> None:
        result = dp.ActionResult()
        a, b, c = (tmp_path / n for n in ("a.dcm", "b.dcm", "c.dcm"))
        result.record(dp.FileOutcome(a, dp.DONE, "a done", (tmp_path / "a.out",), ("careful",)))
        result.record(dp.FileOutcome(b, dp.SKIPPED, "single frame"))
        result.record(dp.FileOutcome(c, dp.FAILED, "broken"))
        assert result.outputs == [tmp_path / "a.out"]
        assert result.inputs_used == 1
        assert result.failures == [(c, "broken")]
        assert result.log == [
            "[WARNING] careful",
            "[INFO] a done",
            "[INFO] Skipping b.dcm: single frame",
            "[ERROR] c.dcm: broken",
        ]


class TestShareWorkers:
    """--jobs is split between folders (or files) and frames in one place."""

    @pytest.mark.parametrize(
        ("workers", "tasks", "split"),
        [(8, 1, (1, 8)), (8, 3, (3, 1)), (2, 40, (2, 1)), (1, 5, (1, 1)), (0, 5, (1, 1))],
    )
    def test_split(self, workers: int, tasks: int, split: tuple[int, int]) -> None:
        assert dp.share_workers(workers, tasks) == split

    def test_cluster(self) -> None:
        assert dp.share_workers(4, 10, cluster=True) == (10, 1)

    def test_little_work_runs_in_this_process(self) -> None:
        half_ms = 0.0005  # a text header dump
        assert dp.share_workers(2, 400, task_s=half_ms) == (1, 1)
        assert dp.share_workers(2, int(dp.POOL_MIN_WORK_S / half_ms) + 1, task_s=half_ms) == (2, 1)
        assert dp.share_workers(8, 1, task_s=1.0) == (1, 8)
        assert dp.share_workers(2, 400, task_s=0.0005, cluster=True) == (400, 1)
