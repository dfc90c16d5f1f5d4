<#
.SYNOPSIS
Watch a folder of patient/series subfolders and merge each new one once it has settled.

.DESCRIPTION
A thin wrapper around "dicompressor.py -j --watch": it finds Python and the script next
to it, checks its parameters and runs the watch mode; Ctrl+C reaches DicomPressor, which
stops cleanly after the current folder. Extra options can be given in the environment
variable DICOMPRESSOR_OPTS (for example "--settle 10 --log-file C:\Logs\dicompressor.log").

.EXAMPLE
.\dicompressor-watch.ps1 -WatchDir "D:\DICOM\Patients" -IntervalSeconds 300

.EXAMPLE
.\dicompressor-watch.ps1 -WatchDir "D:\DICOM\Patients" -OutputDir "D:\Merged"
#>
param(
    [Parameter(Mandatory = $true)][string]$WatchDir,
    [int]$IntervalSeconds = 300,
    [string]$OutputDir = ""
)
$ErrorActionPreference = "Stop"

if (-not (Test-Path -LiteralPath $WatchDir -PathType Container)) {
    Write-Error "error: ${WatchDir}: no such folder"
    exit 2
}
if ($IntervalSeconds -le 0) {
    Write-Error "error: IntervalSeconds must be a whole number above 0, not '$IntervalSeconds'"
    exit 2
}
$script = Join-Path $PSScriptRoot "dicompressor.py"
if (-not (Test-Path -LiteralPath $script -PathType Leaf)) {
    Write-Error "error: $script not found next to this wrapper"
    exit 2
}
$python = $env:PYTHON
if (-not $python) {
    foreach ($candidate in @("python3", "python", "py")) {
        if (Get-Command $candidate -ErrorAction SilentlyContinue) { $python = $candidate; break }
    }
}
if (-not $python) {
    Write-Error "error: no Python found (set the PYTHON environment variable)"
    exit 2
}

$arguments = @($script, "-j", "--watch", "$IntervalSeconds", "-f", $WatchDir)
if ($OutputDir) { $arguments += @("--output-dir", $OutputDir) }
if ($env:DICOMPRESSOR_OPTS) { $arguments += ($env:DICOMPRESSOR_OPTS -split "\s+") }

$copies = if ($OutputDir) { ", copies to $OutputDir" } else { "" }
Write-Host "DicomPressor watch: $WatchDir every ${IntervalSeconds}s$copies"
Write-Host "  $python $($arguments -join ' ')"
Write-Host "  Ctrl+C stops after the current folder."
& $python @arguments
exit $LASTEXITCODE
