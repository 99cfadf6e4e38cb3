<#
.SYNOPSIS
Storyloom installer for Windows.

.DESCRIPTION
Creates a private virtual environment, installs the PyTorch build that fits the NVIDIA driver, then
Storyloom, then Start-menu and desktop shortcuts that start the app without a console window.
Run it again to repair or upgrade. -Uninstall removes the environment and the shortcuts; your stories,
models and settings stay unless -Purge is given.

.EXAMPLE
powershell -ExecutionPolicy Bypass -File install.ps1
.EXAMPLE
powershell -ExecutionPolicy Bypass -File install.ps1 -Uninstall
#>
[CmdletBinding()]
param(
    # Virtual environment folder (env STORYLOOM_VENV; default %LOCALAPPDATA%\Storyloom\venv).
    [string]$Prefix = '',
    # What to install: this repository (default) or a storyloom wheel.
    [string]$Source = '',
    # Python 3.10+ used to create the environment (env STORYLOOM_PYTHON; default: the py launcher, then python).
    [string]$Python = '',
    # PyTorch requirement, e.g. torch==2.13.0.
    [string]$TorchSpec = 'torch',
    # PyTorch wheel index: 'auto' picks it from the NVIDIA driver, 'default' uses pip's configured indexes.
    [string]$TorchIndex = 'auto',
    [switch]$NoShortcuts,
    [switch]$DryRun,
    [switch]$Uninstall,
    # With -Uninstall: also delete stories, models and settings.
    [switch]$Purge
)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

$RepoDir = Split-Path -Parent $PSScriptRoot
$DataDir = if ($env:STORYLOOM_DATA_DIR) { $env:STORYLOOM_DATA_DIR } else { Join-Path $env:LOCALAPPDATA 'Storyloom' }
$ConfigDir = if ($env:STORYLOOM_CONFIG_DIR) { $env:STORYLOOM_CONFIG_DIR } else { Join-Path $env:APPDATA 'Storyloom' }
if (-not $Prefix) {
    $Prefix = if ($env:STORYLOOM_VENV) { $env:STORYLOOM_VENV } else { Join-Path $DataDir 'venv' }
}
if (-not $Source) { $Source = $RepoDir }
if (-not $Python -and $env:STORYLOOM_PYTHON) { $Python = $env:STORYLOOM_PYTHON }
$VenvPython = Join-Path $Prefix 'Scripts\python.exe'
$VenvPythonw = Join-Path $Prefix 'Scripts\pythonw.exe'
$IconFile = Join-Path $Prefix 'storyloom.ico'
$Shortcuts = @(
    (Join-Path ([Environment]::GetFolderPath('Programs')) 'Storyloom.lnk'),
    (Join-Path ([Environment]::GetFolderPath('Desktop')) 'Storyloom.lnk')
)

function Fail([string]$Message) {
    Write-Host "error: $Message" -ForegroundColor Red
    exit 1
}

# Print a command; run it unless this is a dry run. A non-zero exit code stops the installer.
function Invoke-Step([string]$Exe, [string[]]$Arguments) {
    Write-Host "+ $Exe $($Arguments -join ' ')"
    if ($DryRun) { return }
    & $Exe @Arguments | Out-Host
    if ($LASTEXITCODE -ne 0) { Fail "'$Exe $($Arguments -join ' ')' failed with exit code $LASTEXITCODE." }
}

function Remove-Tree([string]$Path) {
    if (Test-Path -LiteralPath $Path) {
        Write-Host "+ remove $Path"
        if (-not $DryRun) { Remove-Item -LiteralPath $Path -Recurse -Force }
    }
}

function Test-Venv([string]$Path) {
    return Test-Path -LiteralPath (Join-Path $Path 'pyvenv.cfg')
}

# Runs a native command quietly; returns its trimmed output, or '' when it cannot start or fails.
function Get-NativeOutput([string]$Exe, [string[]]$Arguments) {
    $ErrorActionPreference = 'Continue'
    if (-not (Get-Command $Exe -ErrorAction SilentlyContinue)) { return '' }
    $output = & $Exe @Arguments 2>$null
    if ($LASTEXITCODE -ne 0) { return '' }
    return "$output".Trim()
}

# The first Python 3.10+ found: -Python, then the py launcher, then python on PATH.
function Find-Python {
    $candidates = @()
    if ($Python) { $candidates += , @($Python) } else { $candidates += , @('py', '-3'); $candidates += , @('python') }
    $probe = @('-c', 'import sys; print(sys.executable if sys.version_info >= (3, 10) else str())')
    foreach ($candidate in $candidates) {
        $extra = @($candidate | Select-Object -Skip 1)
        $found = Get-NativeOutput $candidate[0] ($extra + $probe)
        if ($found) { return $found }
    }
    Fail ('Python 3.10 or newer was not found. Install it from https://www.python.org/downloads/ ' +
        '(tick "Add python.exe to PATH") or pass -Python C:\path\to\python.exe.')
}

# Prints the GPU/driver/disk report and returns the PyTorch index URL ('' = pip's own indexes).
function Select-TorchIndex([string]$BasePython) {
    $gpucheck = Join-Path $RepoDir 'storyloom\gpucheck.py'
    & $BasePython -I $gpucheck --models-dir (Join-Path $DataDir 'models') | Out-Host
    if ($TorchIndex -eq 'default') {
        Write-Host "PyTorch wheel index: pip's configured indexes (-TorchIndex default)"
        return ''
    }
    if ($TorchIndex -ne 'auto') {
        Write-Host "PyTorch wheel index: $TorchIndex (-TorchIndex)"
        return $TorchIndex
    }
    $tag, $url = (Get-NativeOutput $BasePython @('-I', $gpucheck, '--torch-index')) -split '\s+', 2
    if (-not $url) { Fail 'the GPU check failed; see the messages above.' }
    Write-Host "PyTorch wheel index: $tag ($url)"
    return $url
}

function New-Venv([string]$BasePython) {
    if ((Test-Venv $Prefix) -and (Get-NativeOutput $VenvPython @('-c', 'print(1)'))) {
        Write-Host "Reusing the environment at $Prefix (repair/upgrade)."
        return
    }
    if (Test-Venv $Prefix) {
        Write-Host "The environment at $Prefix is broken (was Python upgraded?); creating it again."
        Remove-Tree $Prefix
    }
    elseif ((Test-Path -LiteralPath $Prefix) -and (Get-ChildItem -LiteralPath $Prefix -Force | Select-Object -First 1)) {
        Fail "$Prefix exists and is not a Python environment; choose an empty folder with -Prefix."
    }
    Invoke-Step $BasePython @('-m', 'venv', $Prefix)
}

# The PyTorch build in the environment ('cpu', 'cu124', ...), or '' when there is none.
function Get-InstalledTorchTag {
    $probe = 'import torch; v = torch.version.cuda; print(''cu'' + v.replace(''.'', '''') if v else ''cpu'')'
    return Get-NativeOutput $VenvPython @('-c', $probe)
}

function Install-Packages([string]$IndexUrl) {
    $pip = @('-m', 'pip', 'install', '--upgrade')
    if ($IndexUrl) {
        # pip counts a torch of another build (e.g. the CPU one, before a driver update) as installed: replace it.
        $wanted = $IndexUrl.TrimEnd('/').Split('/')[-1]
        $installed = if ($DryRun) { '' } else { Get-InstalledTorchTag }
        if ($installed -and $installed -ne $wanted) {
            Write-Host "Replacing the $installed build of PyTorch with the $wanted build."
            Invoke-Step $VenvPython @('-m', 'pip', 'uninstall', '--yes', 'torch')
        }
        Invoke-Step $VenvPython ($pip + @('--index-url', $IndexUrl, $TorchSpec))
    }
    else {
        Invoke-Step $VenvPython ($pip + @($TorchSpec))
    }
    Invoke-Step $VenvPython ($pip + @($Source))
}

function New-Shortcuts {
    Write-Host "+ copy storyloom.ico to $IconFile"
    if (-not $DryRun) { Copy-Item -LiteralPath (Join-Path $RepoDir 'assets\icons\storyloom.ico') -Destination $IconFile -Force }
    foreach ($path in $Shortcuts) {
        Write-Host "+ shortcut $path -> $VenvPythonw -m app"
        if ($DryRun) { continue }
        New-Item -ItemType Directory -Force -Path (Split-Path -Parent $path) | Out-Null
        $shortcut = (New-Object -ComObject WScript.Shell).CreateShortcut($path)
        $shortcut.TargetPath = $VenvPythonw
        $shortcut.Arguments = '-m app'
        $shortcut.WorkingDirectory = $env:USERPROFILE
        $shortcut.IconLocation = "$IconFile,0"
        $shortcut.Description = 'Storyloom: stories and illustrations on your RTX PC'
        $shortcut.Save()
    }
}

function Install-Storyloom {
    if (-not (Test-Path -LiteralPath $Source)) { Fail "-Source '$Source' does not exist." }
    $basePython = Find-Python
    Write-Host "Python: $basePython"
    $indexUrl = Select-TorchIndex $basePython
    New-Venv $basePython
    Install-Packages $indexUrl
    if (-not $NoShortcuts) { New-Shortcuts }
    Write-Host ''
    if ($DryRun) {
        Write-Host 'Dry run finished: nothing was changed.'
        return
    }
    Write-Host "Storyloom is installed in $Prefix."
    Write-Host 'Start it from the Start menu or the desktop shortcut.'
    Write-Host "Try the demo models: & '$(Join-Path $Prefix 'Scripts\storyloom.exe')' demo"
}

function Uninstall-Storyloom {
    if ((Test-Path -LiteralPath $Prefix) -and -not (Test-Venv $Prefix)) {
        Fail "$Prefix is not a Python environment; nothing removed (check -Prefix)."
    }
    Remove-Tree $Prefix
    foreach ($path in $Shortcuts) { Remove-Tree $path }
    if ($Purge) {
        Remove-Tree $DataDir
        Remove-Tree $ConfigDir
        Write-Host 'Storyloom, its stories, models and settings are removed.'
    }
    else {
        Write-Host "Storyloom is removed. Your stories, models and settings are kept in $DataDir and $ConfigDir"
        Write-Host '(run with -Uninstall -Purge to delete them too).'
    }
}

if ($Purge -and -not $Uninstall) { Fail '-Purge only goes with -Uninstall.' }
if ($DryRun) { Write-Host 'Dry run: nothing is changed.' }
if ($Uninstall) { Uninstall-Storyloom } else { Install-Storyloom }
