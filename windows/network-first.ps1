# bootcast: put the firmware's network boot entry first in BootOrder again, after Windows
# (setup, a feature update) put its own boot manager first. Run as SYSTEM at every startup,
# for example from a scheduled task the master's SetupComplete.cmd creates:
#
#   schtasks /create /tn "bootcast network first" /ru SYSTEM /sc onstart /f ^
#     /tr "powershell -NoProfile -ExecutionPolicy Bypass -File C:\Windows\Setup\Scripts\network-first.ps1"
#
# It reads `bcdedit /enum firmware` and moves the first entry whose description names a
# network boot (PXE, IPv4, Network, Réseau, Netzwerk) to the front of {fwbootmgr}'s display
# order. It works on localised Windows: identifiers are matched as GUIDs, not by label. It
# changes nothing when that entry is first already, and logs to the Application event log.
# Not run by bootcast's tests (no Windows machine in the lab): try it on one PC of each model.

$ErrorActionPreference = 'Stop'
$source = 'bootcast'
if (-not [System.Diagnostics.EventLog]::SourceExists($source)) {
    New-EventLog -LogName Application -Source $source
}
function Say($text) { Write-EventLog -LogName Application -Source $source -EventId 1 -Message $text }

$text = (bcdedit /enum firmware) -join "`n"
# blocks are separated by blank lines; each holds an identifier {GUID} and a description
$network = $null
$order = @()
foreach ($block in ($text -split "`n\s*`n")) {
    $ids = [regex]::Matches($block, '\{[0-9a-fA-F-]{36}\}|\{fwbootmgr\}') | ForEach-Object { $_.Value }
    if ($block -match '\{fwbootmgr\}') {
        $order = [regex]::Matches($block, '\{[0-9a-fA-F-]{36}\}') | ForEach-Object { $_.Value }
        continue
    }
    if (-not $network -and $ids.Count -gt 0 -and $block -match '(?i)PXE|IPv4|Network|R.seau|Netzwerk') {
        $network = $ids[0]
    }
}
if (-not $network) { Say 'no network boot entry in the firmware: nothing changed'; exit 0 }
if ($order.Count -gt 0 -and $order[0] -eq $network) { exit 0 }
bcdedit /set '{fwbootmgr}' displayorder $network /addfirst | Out-Null
Say "network boot entry $network put first in the firmware's boot order (was: $($order -join ', '))"
