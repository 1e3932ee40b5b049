# Runs inside a controller (sh, fed on stdin): one line per JBOD disk, "DEVICE WWID BY_ID_PATH SERIAL".
# The JBOD's LUNs are the SCSI disks whose vendor is HACRIG (set by rigctl/jbod.py).
udevadm settle --timeout=10 || true
for dev in /sys/block/sd*; do
    [ -e "$dev/device/vendor" ] || continue
    vendor=$(tr -d ' ' < "$dev/device/vendor")
    [ "$vendor" = "HACRIG" ] || continue
    name=${dev##*/}
    wwid=$(cat "$dev/device/wwid" 2>/dev/null || echo none)
    byid=none
    for link in /dev/disk/by-id/wwn-*; do
        [ -e "$link" ] || continue
        case "$link" in *-part*) continue ;; esac
        if [ "$(readlink -f "$link")" = "/dev/$name" ]; then byid=$link; fi
    done
    serial=$(sg_inq -p 0x80 -r "/dev/$name" 2>/dev/null | tail -c +5 | tr -d '\0 ' || true)
    echo "/dev/$name $wwid $byid ${serial:-none}"
done
