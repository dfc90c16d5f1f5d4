<#
.SYNOPSIS
Watch a folder of patient/series subfolders and merge each new one once it has settled.

.DESCRIPTION
A thin wrapper around "dicompressor.py -j --watch": it finds Python and the script next
to it, checks its parameters and runs the watch mode; Ctrl+C reaches DicomPressor, which
stops cleanly after the current folder. The parameters are the original DicomPressor's:
-LogFile adds --log-file; -ScanStateFile adds --scan-state-file (an empty one turns the
cache off); with a -LogFile and no -ScanStateFile the cache goes beside the log,
<log name without its ending>.scan-state.json. Extra options can be given in the
environment variable DICOMPRESSOR_OPTS (for example "--settle 10"). Run without
parameters, it prints this help and exits 0.

.EXAMPLE
.\dicompressor-watch.ps1 -WatchDir "D:\DICOM\Patients" -IntervalSeconds 300

.EXAMPLE
.\dicompressor-watch.ps1 -WatchDir "D:\DICOM\Patients" -OutputDir "D:\Merged" -LogFile "D:\Logs\dicompressor.log"
#>
param(
    [string]$WatchDir = "",
    [int]$IntervalSeconds = 300,
    [string]$OutputDir = "",
    [string]$LogFile = "",
    [string]$ScanStateFile = ""
)
$ErrorActionPreference = "Stop"

if (-not $WatchDir) {
    Write-Output "usage: dicompressor-watch.ps1 -WatchDir DIR [-IntervalSeconds N] [-OutputDir DIR] [-LogFile FILE] [-ScanStateFile FILE]"
    Write-Output ""
    Write-Output "Watch DIR and merge (dicompressor.py -j) every patient/series subfolder that holds"
    Write-Output "new DICOM slices, once its files have stopped changing; each merged folder gets a"
    Write-Output ".dicompressor_done marker and is not merged again."
    Write-Output ""
    Write-Output "  -WatchDir         the folder to watch (with its subfolders)"
    Write-Output "  -IntervalSeconds  seconds between passes, a whole number above 0 (default 300)"
    Write-Output "  -OutputDir        also copy every merged file there (created if missing)"
    Write-Output "  -LogFile          also log to this file (rotated at 10 MB)"
    Write-Output "  -ScanStateFile    cache of folder times, so a pass reads only folders that changed"
    Write-Output "                    (default with a -LogFile: beside it; an empty value turns it off)"
    exit 0
}
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

$scanState = ""
if ($PSBoundParameters.ContainsKey("ScanStateFile")) {
    $scanState = $ScanStateFile
} elseif ($LogFile) {
    $logFolder = Split-Path -Parent $LogFile
    if (-not $logFolder) { $logFolder = "." }
    $logName = [System.IO.Path]::GetFileNameWithoutExtension($LogFile)
    $scanState = Join-Path $logFolder "$logName.scan-state.json"
}

$arguments = @($script, "-j", "--watch", "$IntervalSeconds", "-f", $WatchDir)
if ($OutputDir) { $arguments += @("--output-dir", $OutputDir) }
if ($LogFile) { $arguments += @("--log-file", $LogFile) }
if ($scanState) { $arguments += @("--scan-state-file", $scanState) }
if ($env:DICOMPRESSOR_OPTS) { $arguments += ($env:DICOMPRESSOR_OPTS -split "\s+") }

$copies = if ($OutputDir) { ", copies to $OutputDir" } else { "" }
Write-Host "DicomPressor watch: $WatchDir every ${IntervalSeconds}s$copies"
if ($LogFile) { Write-Host "  log: $LogFile" }
if ($scanState) { Write-Host "  scan state: $scanState" }
Write-Host "  $python $($arguments -join ' ')"
Write-Host "  Ctrl+C stops after the current folder."
& $python @arguments
exit $LASTEXITCODE
