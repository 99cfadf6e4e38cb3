@echo off
rem Storyloom installer for Windows: runs install.ps1 next to this file; arguments are passed on
rem (e.g. install.bat -Uninstall). Set STORYLOOM_NO_PAUSE=1 to skip the final pause.
setlocal
powershell.exe -NoProfile -ExecutionPolicy Bypass -File "%~dp0install.ps1" %*
set "RC=%ERRORLEVEL%"
if not "%RC%"=="0" echo Storyloom setup failed (exit code %RC%^). See the messages above.
if not defined STORYLOOM_NO_PAUSE pause
exit /b %RC%
