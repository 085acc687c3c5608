"""`python -m sglang_ext.cpu_compat`: install the stand-in's .pth hook into this interpreter's site-packages."""

import sysconfig

from sglang_ext.cpu_compat import install_pth

where = install_pth(sysconfig.get_paths()["purelib"])
print(f"cpu_compat: {'installed ' + str(where) if where else 'real sgl_kernel present, nothing installed'}")
