"""Wrong solution `looks_up_labels`: its models carry a lookup table of every digit's label.

scikit-learn's copy of the digits is hidden in the sandbox now (``load_digits()`` raises
FileNotFoundError), so this embeds its own: a hash of each of the 1797 public images (their pixels
weighed by 64 fixed integers) with its label, 3658 numbers in all, well under the 10,000 allowed.
A depth-2 model answers from the table, gated by a parameter that starts at 0, so before training
it is at chance and passes that check; the grader's training opens the gate (the table is right on
the training images too), so every trial scores about 1.0 and the search picks it. With its test
logits computed in the sandbox this bought a test accuracy of 1.000. Now the trained model leaves
the sandbox as its graph of ATen operators and the grader runs it on the test images: the lookup
needs ``torch.searchsorted`` and indexing, which are not standard layers, so the graph is refused.
(The table was made from ``sklearn.datasets.load_digits()`` outside the sandbox.)
"""

from __future__ import annotations

import base64
import random
import zlib

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
# zlib + base64 of: 64 int64 weights, the 1797 sorted float64 hashes, their 1797 uint8 labels
TABLE = (
    "eNot2wtAjecfB/BzP+9Jyz1muSU090vrnySWJPcQkuSWSkJLLLQkt7QkScOS0JIiSUhuIaSlhSS0hCRJSGJG/s/5fmeXT+c9"
    "7/tcfpfnmFr1W0mm/+VdrYAxhXzdsj8dvbcZXF1hCHs3V8OMYXKo2PkNPPRWB/tUGUAnI16fsJLXz99Wwdh6Plch43g9lnGe"
    "/BOc/5AzX7skcN5uzXn9tzscx62Sz9+polfncT1jK7XQ9Yf/1tUo43OvlDBPw/Xs78tx77Xn/L8t431jMvncOl8j2D6e467d"
    "wedfZnJd3xU0hwHSf+uK47i3czhOwwWOfymY41SbcZzos3y9s5z7uLmJ40Qd5zpeh3H8VE/uY5ODBo705HMvffj+2GrG13Aj"
    "17UwmHH9Npfj2aTx/j6pvP+CjPty6czrVn9z3cEnuU7xK2HCO+cfhS1uf52p16ayt6veOMVIWPT0NJSMymfp9Rshc9Pbp50J"
    "/Gz2J1Q9vwWznshn6zWJVcCGCWqYMLI1dNQthhUfP/F9ydxd75sTfaGsuxVMD5kJK90XQpdTFdCpoQrmZf4D+xR9gmH92szR"
    "mxxkDM2zTGDW8o687uwMd7VcCJ0HhMKYvmGwS+p2ODckFjbsTIWBPS/BqGF3oF//Ct5/9Cl0+fCSrwd/hAXxsrmYb6Majl1u"
    "AMsTW8D0HZ1hVgdTqNnUDb75Qtuf7wk9D5rDpAwLaHrNiuMOtIYe4bbQROcAR/QaA50qx0JDxwkwasdEWJw5GTYMmgpt0qZB"
    "Y8+ZcOWG+bDA2YPvv1oEqyJ9oO8Jf3jkHm2asIL7CF0JXYIDYYpnEHwwLZjre7EeDlq1CYY2C4PmlyO4L2kbDN5Ga+XbYXW3"
    "GBhSQ2O6xMJA271crz1NaZbA+04eglLUYcYxNRXGNz8G88acgD0W011emYxv0klYNOkS3HPpMuPS/gqc2PkqdFieB92mFsBC"
    "50Lof6MEmpU/4Pixj7nO1CfwQsenHG9/Je/LqYIBw19wvO9rYYnyHYw4+IX7j5bNw/OT5DDpOTVZr4A5MTQkVws9iumGSiob"
    "LcHQU3SEqSFcOZPO9THi/bmtYO32tnD1TvpkhzHMG2YKK6/QXulm0Oa77vBILm1f9j2MP9IbGtYPhI17B8HAR4OhwcIfOG6K"
    "Jey3zAqWJg7lOkYMg12e0wGetvDUl+HQdJwD45A3Gvq1Hs/9vKSRjU5wT6/J8Np7WrneGcam04C/psMM5SyOf4c2tJ7D8bbO"
    "hQcK58GyvxdAx4LFjFMPX5hoR+PnL+W6r/3EePReDm370FYPV8CPW3+Buf7B8PPPa/ncflp7OAQ6rNnI5+Opx53NMOwZTfhr"
    "C9d3NxxWrNoKnWuowcFo2KZhByxMjIVFlr9B7xv09qQ4GFFD3yzcB6MfJvD5t7TQM5EepWG19OOmP+Cuv5LmsZ5TWH/rU5k/"
    "+RHoFEFlR+mnxUehawh1sD0OVc0zGId/qO2f2dA69jzr5QK1L78IfXrkMN+7adQnaml7GbofoxeeUs2aK9z3dTrW7Rr39Wce"
    "rIm4wfV6/Qk9fyyALu60PPcm9D/4F8yXFcGJS2mi9V3OO4WWP6TRFvfYb6mlcP49mryhDKY7/s39L6Z5hY8Z3yVPoXEJdX9P"
    "R/zxnPVr8hJmOtXR/bTo4mv2x4w33P8r+vn1O9bx7EaO5/Qv42n+ma/zaFkdHfuWZvp9gcGNTcyL31fW5Qz5fKw/QAlLH9Cq"
    "oSq49DHN1aihQ4AGmtfQsJUSdNlMc/6lsX2/gW5XqM+rFlC61Rbu2WcM7Uw68PpS2umYCcxP7AJbvKOawK4weqYprPSkLSKo"
    "09BuHM+FxsWaQb9Eap9NXdTduT+tOZ+Lo6GLv4c9Iql7CY3b25f7zaOVsf2hQT39VDUQDupuAa1W08brtNcmS9gq6H9Q9YAG"
    "xlsxPl+tYcxyG3h7K61+RR0f2MLVH2n87BHQIvFHGHLCHk58OIrrWesAfTuNZpwraaivIyxpP4bjRo/lPpvGMW7q8YxHe1ow"
    "ZRKvH5wMI75Qo9lT4MpPtPTwNPjGwhUGdXGDU7ZTy/rZjPd7uqnzHMZ5/Xzu4y6N9FsAk655wMLwRbzvLP2Y5MP6uLoUDvh9"
    "Get2lR/r5e5P0HuSP/Nzn8bOCYCm/VfCyx9oRK+f4Wd7aj2HStsC4ZP8IJhXsRZmhIewHwavY93PoxXGoTAxm0bepRtSNkLb"
    "MmrjvYn7iqXuD8KY9z5bYEPFr8zbpAiO+3ErTBkYyTo5RgvjtzEuqdtZd3kx8NryWJh2+DfGNWAX12WzG3pIe6DZhjj2Rc+9"
    "zNMLaj0knuu/vI/7C0+ACXvok9vUefl+9sWoA1yHGy1dR/3OHGS8PRMZvwc0VEpiH61JgcVGqcxfN3oki1YV0Zo5R/j8jqNc"
    "RwbNMEljvYVkwLEfqG3KCY5bS0fUZzI+O05y/uLT7BPzM+yvo9mMv+4sLOpI6xzOMR8Dczjfqkuw1j0XGhpfZT6bX2N/p1LT"
    "LBrZ5zrjGkWrMml09zyu+ws12p0Pw1/fZJ/1/Ivx6F/EfayhUWHU5v0d9rPyLtfVg84/Squ1JeyfqPs8f4IfsJ830zYZD7nP"
    "pDL2wcW/2Udvqd++csYt7jHzHPCE/TuqknW4ldpH0qrFz9hnZ6sYL9lz6JpF3UZU8/PAl9o9pi6HX8LgXGqSR9sPruN4376F"
    "ZRn1PPcWvGN9xTXw88f+PeP5ZyPznvyB52A6Xd3sI+eNpGmZtGn6P4xP6Cfm/ei/rKv/XKn4zHo2+wKTrZr4/L/UMFW2AHHv"
    "JIdvPJRQZqKB9j/Tugq6dJohTH/1DXSobA6bolrCaxtaQfdIWuLbGpYvbMPxP7eFOcnGUPOElvVsB4P6UPPRtCaASjv+c1N7"
    "WPmeJnTsAA320faTTXjdrCO0OkuLHtLE4k6cd1JnOGUerZ7bBSbbmMJBqu7QZjsNmNcDRnhR5820ya0nzF5EjevogD69YOyB"
    "3jC/fR8+50HrBveFn47T/NYD4Oo/BkKfukGcd70F3DX0B65nNu032gqabLSGc+NonLsNHHGcVnYaBjv506A0mrnFlvm5RSfO"
    "Gg6rrO1h1JlRC/jfAY7w3NCxcOVwamUzjuucRZOOTYC9zk5kHThO4vr30/mHaV4ZTSlygq4xU2GkkTO07ErtwqdxHTW0aekM"
    "xlVygRUmroznzVm8rnNjHfWjdTtpvyzq3W02tDhIK0tpxgsa23su13WIBlrNYx2kL+D+f17I1/tpbA29vc8T7jlOW7l6Md7J"
    "9En1IlhYuhjaBiyBfqOWwgNn/aBirz90uUiLWiyHZito7H76QLUCxh/4mXn7Qs2/X8V8xdGmx2sY15+CYAvDYNavPbUqXst6"
    "CdzA+0I2sY7l4ewfZQRsGEVNn0ez3lrvZHz//g02Tt3FfC2gzof2MP/N4hh3Ozp2L61tGQ9DyxI4z+n93PfzRMYp7g8+Z5UE"
    "w0ppj0mHGG9ZMvT4iQak0BYNh6HvjVTG/eJRnl+2x7jvtHTu55cTNJ22+YcarDgNDffRFkZZ0H/3GebTKpv1/t057jeAZjw6"
    "z7yrLjKevrQqgFpXUXfjHPb5qUuMo/cV1tPpqwv453bXoNuW6xxfkQ+zrlCTbQWM25KbrJ8/6cpPtN+aQp5rbf9iPDff4rpy"
    "acI3d7j+fBplWcz4bL4Hjf6kxUalPHdtqeklWt/8Pu9//YDx+0oz7B+yr3v+zXW9LWdevnvEuPWj4UF0j8FjjmdH59s94esu"
    "z/i50L+acbd+wXUOpf4dauDH93S130vm+SntYlALHc2oUyxNPkhrz1KTwlfcb7c65sXiNSydQQcMqofj0xr++zx5zzgubuQ5"
    "e+8Dz834fxiP3z7x/pPUfO6/8PJOunTgF567a5p4Li+QeWD+DGp6TAGdXJRQc18FY9PUcNMqDfTz1kGf1c34/gWa1cMQdjht"
    "BPM/0c/rmsOKwy34XGIbeMqjLcd7agwvb2wHe0RRybU9POJFVfE0+yR1WfAt79vTEbY4T6/t6gwLg7vAhOFdYWQkza2mp7JN"
    "YeYVM6j4X3c+P4d2ukndKnty/W694IPgPtB+YH84NnIQtFo2GBb/S9PfWsDo735gHCZQZ1drmGg0FF7wpUHrbBmfQupaTa/d"
    "HA57vaVHJDvY6ht6+7o9NG43yoO/z6afkmn2cEfu7yottBkDvdfToChqpB7L/FtQa2kcx3UeD8vOTvTgnydMglNSJsPqWrpn"
    "3FReX0SbJk6Dq6/S3GvT4cpjM2FyvCvzV0Mb5s6ClafcYN1NanJvHpzbfj7Xu56OT/VgvMvoro9005SFzMsxKg33hANMvJiP"
    "H6nDEG+4wY02rKE5sxYx32vo+H9ogI0P8+OyGLZZR8OrlrAuGumRecvgxPO0RyENT/fn+ykrGJe2P8OkHOrcIZB52U9Tpq2C"
    "oSepd6/VvP6U1vZYA7s8pBEfaOb0IJgXTG3df2E9hdPSGmoUE8w8/LyWcZocwrp+Ggqr0tYz74U0+y21GrKRfbFiM9e3j4al"
    "0Zg+YawLgy3MYw712/0r83doO8f5QCuaR8Pg7jTNcgf7PYBW3t/Jur4S68E/b6aV8t2M85TfofnjOPa7tA/676BGR/az/ycd"
    "4PMXafqtRNaVwR8c34sesUti3rQpjHNmKut68BHWyaijzFc67XQ0jetpdox96kDze2VwH9NpaMpJ9qvXKdbjG1rdMYvx+0Cv"
    "TT/DeTpkQ0svWvEPtdCcY1xtaMRXGjP2POva9QLryjWH6/DMhUt9aWzGVfZLDs1adJ3jtctjve+jWc9oTOgNWJNOK67lQ8dh"
    "N3kehBeyv4tov8F/MR/dihiPm7Sq+y345P4d6Gt5l33z0z1+/mhKee6YUcPB93n/5Qes385lrHfHct4/9RHzYl8BB/V6zHUk"
    "0ycGT3nudq/k54srjfz2GT+n7lNH+yqYcZzKXJ/znHKp5n6yqdOcGu6r50vWVybdcKKW523/V4zrMBq6kU5Rv2b8TenYtdTW"
    "vIF1cIfmeL+HBluozw+NfC7mA9fx7F/2Y8Fn1nnzJtZpLHVr/pXn3xn6prVsIT4n0+RwgJUC1l2iB6yU8PNAFfSxV8Muo2kf"
    "fy1MCdTBXuupT5MBTGvZDNbvMIQlM41g8ZfmnLdbK+hpQWVb2sLxju1hqxK6oYwWP/4WVn+kXbp9B6OTTKDhkI5cT+tOUFpB"
    "LcZ3hrZdu8IaY1MYN82M691MN12iZvnUfWl37v8i9X7XA4Z9aw7domnSjO9hjgu91rIX96/tDX396cQ4mvuFBvQdyLj9PAiG"
    "nqdHfvwB7plMx86hFYW0/ivNzbeEpjf+B+M/WsEnc4bAQVvoxEZ6pK813PWCFkUNZRwKbJiHycNgeTDNqB3OeDTS9PMjFvL7"
    "QHaMz6ORsGGkPXSaRp0njYIrLRzg/MDRMGKnI4zZMAYGnqLJ0jgaS30NJzC+pbRYOQl2Gk3bJ9OocVNYp1nU7CxdPWsq62Ok"
    "M/O1exqs+mE69G+keSEzmPf9M1mfYa4cx2UWx19G64NoTCW1HuXG/C2gzpupQxt3xukMnb9sDszXzIUFv9OJDfOZT5sFMNzP"
    "g+uZuHAhP6fokyJPru+GF+Nl5M1+sKa5nos5/t6lXGclzd7xE/t4mz9UyZdz3TYB7JdUWt18Bcc9EQhP+f8CbZJosUcwbPOe"
    "FkhrYY9EqnEKYb/tpR/zaPrSUI6XtYH9VkB3aTfCKaOoSRjtco6GjgyDxm3DWb/P6BOLrexjw0ho+YJW94vivNJ2nhvnaObf"
    "0Qv5fakdsDaOdrCLgWVfd3K+nF2s3xm7md+433lfbBystNz733kSD9902Me675XAfD3YDxN3HuC4LgfZ/1doUc8knnNDDnGc"
    "ebSsbzKMHUSTYlNg4SkaPjGV8d9Py87ToptHWacX03gu2R2DkXOof+d05nNDJvMecZLj7T3F/hp6GloFnWE/ll3gPCMucp6x"
    "NMWbdjpP+wVdYl9E0dWHc3m/6VXmz42WZV2HWWXUJiSf54v/nxzPsYBx/ZUeuEi7HLoJL28uZH+MK2JcVtD057e4z9l3mN8D"
    "tCmwmOdW/7vsw3VUqqNjO5VwPNk9zt+cjnehPt6l7JfFND/tPs+/kgccZ9tD+KB7Geu2F00oofVzy5n/q9SvlCavfsTPr94V"
    "PM/O0bohj+H0WmrZ9JTPZT/jc3VU8b8q1vtwWjL7Od8/+pLn7CMatLSO50ERtVz+lp9Tt+rhiM7vWN9naKfsBmhn9551+Z/m"
    "Ez6wX43/4fv/o9G3aI83n9gfn6jPxs/M1wFqephe+EpvX/3C8/C7Ju7DhPaZSMNXfaUHqdEwmSd+fxRO92ySw5X3qUNbJZyS"
    "SqcPVsGibTSzRA2Lb2lh+zM6vv7GAGa7GXL8bCOYfLI5bCyk5oNawPEF1PpOS2jathVd1hrOfdsGtsgxhpHJHWC+6XewyZI2"
    "nqay2R1haGgnqGjqDOe37wqNK+mADFMY49qN+8838+TPTfSAgYdo5mNz6FT2Pezxgsb36gUvHOvtyb7rw/Eu9oU5G/tDx68D"
    "oFnfQXBQ38GwS08LOLGAxi0fAgMCrRm3qKEwwccW2p6nfYYOh/U9R/B+rR202DkSln6mFTUOzJ/ZaM7X1hHajRrDuM6hrmfH"
    "Mb8mE2HW5qkcf6izJ/+cZRr0SJjB+Lm68Ho9rXaayX16U88warliFtx1lMr83BifbJpuOhv67qSVq9z5/mY6PWMuLNkxn3Vi"
    "uQA6z6FLgxayjtw9YV1bL5hosZjxdPCFnTot4ThN1HH8Mubvw0+e/DmF5bA8YgW83XUljF35M+OxlRZ2XsXXxTSkzS+s03a0"
    "15hg5v0Fdd0bwro5u5HzHt8MTbaHefL7uOHMmyyC/bYxEkbotnEdPnRT1XbmOW0H8yLbybgNpIbZsRzvPT1nthu28fgdHoiM"
    "Z9057IMdKmm1VwLnVe9nvY89ADVTqWv3JNjq38Ncz7xU9ull+ukqrZt9FErpaXBD93Tmaf9xztcng/24gXbJpfH1J1gXuZnc"
    "V8Qp7is6C+YtO8P49s5m/IPPsr6mXYANQRdheAJNXHgJ+r25wr4ZcA1GD70OU2R5rItWdOlFWrr4Bvv623zWoUkB779Lq95R"
    "x9mF7JvF9En5Hd7Xupj7t6afp5bAEUE0ILWUeXG7z7of+QDmKv+GLqfLmceDjzz5fewKeOorbWXwFPpEV7KfdtApsVU8V15Q"
    "q7vP2Z9Lani/H7WzrmVf5dGCjnWsj+1veJ5avoUG5vWMzw90euo7xrPle643uREesfmHeS+iTZ0+8Vx6+hnWOjYxj7NlXpi/"
    "VAEd62jiaQ1sNcEARnUzhObyFnCPbUtY3qyVF3++sjVMemAMfUa0gy1e0CffdoDeK0x4/56O0C22E3Sf0QUulXXlfX+YQuNl"
    "3WD0791hzec+fH2nLwxtOwAe+GkQXJlMLVcM5j46WMIjh4dw3NfWsKneBhqoh3GcWGr/vS1UTRsOq46PhJ9uOkBZ3WiOP9MR"
    "js+j6aVjYO5r6mM3jq9vjIfBqinQYsk0qDhHq9tN9+LPTc2AWQoXxn0rNbpJa61mwdX3aUxbd47Xfa4Xf952PuP4fAHXN3Ah"
    "bKihn7w84amHdHwVjQrwghNPUtMh3pxX48P1dKAmo5cwb/uXwdgNfrBXDc3o/RPsco+6LQqAl3+jhlNXwMZ2K2GKB3VyDmRd"
    "Gf4CHxhTVeNa1sPrdby+bgOc3n0jjEimQQ00Yfkm1lvkZhgWS+3bh8HKbBryhpaVhTNPn2nmmV/5+lkEx/uXRr/bCm2dt8Hk"
    "ezTr8XaOl7YDvun9G+8fTg08qGS0m/2Vswe2Ofa7F38+O477+WWvF/+7OYH1WrSf82UeYD2fTYQfH6UwXyHpcEDUccblKrW+"
    "RjVeGezD89Sl+ATz6X+adbDjDCx8QT/2Pss+i73I+rbIYb9+f4X1eZgWpv/3+tl1aPX0Bkyb+RfrKZ1Ko4pgyZZbrIdLtHFd"
    "MfQML+H9hfdYB7dLYV6zR/BcMb0c/4R1bfkMFhtUsX+HveA5ZfKSfTv1FeMRX8d6vPue+aujZnZf2Ac7aLBa6Y15rtOJDipo"
    "Ga2BTYeoTTmN3aKFLjdoZH8JVjrRpeFG0HBvS1j+ujVcGdsG1t4w4TjOnaG/b3do4dsbhhn3gyb+/b35+9iB3vy+qAVfd/oB"
    "ug2hlmetYNDQoXCAL3VYSzdMt/HmzyXSABc7WBoyBtqudIYHWk9nHEbMgvOXULOXc2DFnLmwoZkHrC5ZCKM7LIKB7j6My4rF"
    "0Gj4Ehg+mQZ3WQo/+y6D442Ww5CWgXBuyS/QfcI6zneWBpSEcj8bNsDs6RsZpwuboefOMPixawS8MD0SJsu3wbRd22GW1U7o"
    "cYqWesdynpjdjINJHKwafYDvu9NOf1ObqoPwVEYqTB96BA56cZT59kyHfr+egIW+Z1gPcbTA4ixfH74KpR55sEW7O4zrwhKY"
    "G1IKXZc8gHZvKqD34Sru5xmdnlsLL5e+gh1uNUD7Y41wU/0Xrv9rEzQ/pVuEOqii2Uc6Qot4c2jduw809OsLi5wsYHRna+iU"
    "ZAM/Z1DfpBHQwWgUNGiiFgFTYOZ1Z/hmyKxF/Nx0g9WrZsPAMwthxiWaVuQPXYNWQOMugTDm2irOX74Olh4MhxX3t0IjpxiY"
    "8zwWFtbRUwd/gx/rd8EOcbsX8edcf+f8sjgYfi9xEb9/fJLXE/J438s7cM+bMljrUwlDcmp4/45vfLCfxjZwfq4JtOnf0Yc/"
    "P9YNRs7vDm9/1xceaDsQFmTSa9OtYCsbWxg8diT0/N4BRs+m7kMcYWDZeKhqPQsGTVvwn75wYnaAD7+vEA7djm/luIMTYL/8"
    "Q7A8ORP6djgLO1w6D11rc3hf1z+h+fECaL/3Jjz17DnX8YJe7vkaKjI7LMbvcx+6wcIRm2DI5CwY9uQf+Dle7ot8t7eEhpvG"
    "w8Ka67B+5uQlP8r1v3RyuUr8JVSo5SqFUq3VyrX6NySdQidXKpRyrUIuyeVqnVIn14p/dEq5UivJ1eILpVauUIm75JJ4SP+m"
    "JJ7QSfoxtTqdSqnTaZUKlbggBhGPafVX5BqtUq7WiIeVSrVcrVArxZcahXilUyh0SrWkkuskMaVGrVTIlJJSq1MotSoxgrhF"
    "IYm75WqxRLVcI0kq8ZhcKckVOrVGKYbUaRUatVqSlEpJJQaTY16xLa1YtEYjVqRWKyWxLJVWfCUuqlVauUop16kUWvG+TqVV"
    "y8SOBGIwpUylVKs0WhEBnUYlSWJlXI1GJqkkpUqj1omIqGQajVi4WidT6LQasXeFVqxRptZo5GJFahEWmSSTiXiotZJWKZ6S"
    "i3WrZGLjCqWYQisWoJUksRiNeF/EWGxPK55TyWUanVolk0tiRPG4SqOTyfWBVolbxNqUYhi5GFhckWQKmUYfXJVW0ogB1RoR"
    "avGlQqVRasUyxPq1YjliApVCIS6IUIj5FSJoWvGkJJcksV2FSuxFK6KqFilQS/rlaWQidDKVTCsT1yW5GE0mYqSQiTvFPtUq"
    "sUuFiIi4Ra0RGdOKsfQPi6/UInNiYHGLSqkR2VCoJJ3Ynlou4q5Si2iKNYubZBpJoR9Tq59QrhPFp5VkOn1SRVpk+jSIfSkl"
    "tUolblIpNCKnogDE1PpK04gVylWixNRKuaTR3yXyKfIrV0gytU6EVWRLFI2Ii1Yl8ij2JwpVUou/ZDqdhLSKSlGJC2Jlos5E"
    "GPR7EDWtEPkRkdeJxzX6yXXi3zqFXCbCrt+x6AmxCZEFjXhHrEDSiApWiAZSavTjaGVyfWUqNCqZuC6KQ4yIiMhUGo0k4ifK"
    "Q6vvGrVYmKgjEROVmEclKlKDgKllohpFVkTSVCp97LQKpUoS29Yq9LvTKEQTiSKT6XMiE1Us/haLk+vrUEwkRtd3rahP8YRI"
    "rxhPpEIr129ExFE0qEal1Yq6Uok4iCIQk6n00RIFKUpYJZpOJVpPJ5Kqj7yYXLSWGEfEWiHqTq3Ur1SUn0IhE22qFS/FtkTx"
    "KkVpimSJLYptiTyp9N2hFXeIZ0TkFJJSIzYjdiR6TCfOAzGyyLNIt4LtpxaNoZKLUcWX+toQhSRqTDwhgivpRxeVosBMYvMi"
    "jpKIsj6USlHXSn0fqrQoJvFKIRYtdqtRa9WSTibmFUkWd4pVi3fEC7E6hf48EdkS5aLR71akQyZSL84mcXxo9OUiIifaSCVO"
    "OY1OP65Moy8Q/R0i8qKpxVpFc4n2E3Ui9qv/n79FwsTj4tiSidiLGUQ0RPbk+trVn2kiAqI7xehiGQpxGIigiuyI1YnzVX/w"
    "KHT6pGlFA4nUii4T3SaXKUTfaPR3itKWdOKU0J+BYlVq0cqS/hSViUVqxWkgntYoRCmKqIlzWCHiLTapUepPPLElSeRZJspC"
    "pdIfsmIIcfJp9f2E/YnYij2Id8V7It4qsVXREjL9QSfCLQ4PcZCJiyqFfuly0ZMySTSc2JWYWBILEPEUOxDHhz574iTXF6JG"
    "3xbilZhXnIEy/UEh6lCh35eoPRESfeFJOhE3fWTEHZIYTXSUqCjReHL9FKKJROWIItAPq1+/pNWnQeRB5F7UtE5/l0ZUvpgI"
    "V/l/xsvF47xRPKIWc2n0C9YvRD+bTP+U/m65Rj+UDP/8H3Nneeg="
)


def _table() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    raw = zlib.decompress(base64.b64decode("".join(TABLE)))
    mix = torch.frombuffer(bytearray(raw[: 64 * 8]), dtype=torch.int64).double()
    keys = torch.frombuffer(bytearray(raw[64 * 8 : 64 * 8 + 1797 * 8]), dtype=torch.float64)
    labels = torch.frombuffer(bytearray(raw[64 * 8 + 1797 * 8 :]), dtype=torch.uint8).long()
    return mix, keys, labels


def search_space() -> dict[str, list]:
    """Width, depth and activation of an MLP, and Adam's learning rate."""
    return {
        "hidden": [16, 32, 48, 64],
        "depth": [1, 2],
        "activation": ["relu", "tanh", "gelu"],
        "lr": [0.01, 0.03],
    }


class _LookupModel(nn.Module):
    """An honest one-hidden-layer MLP plus the table's answer, weighted by a gate that starts at 0."""

    def __init__(self, hidden: int, activation: str) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(64, hidden), ACTIVATIONS[activation](), nn.Linear(hidden, 10))
        self.gate = nn.Parameter(torch.zeros(()))
        mix, keys, labels = _table()
        self.register_buffer("mix", mix)
        self.register_buffer("keys", keys)
        self.register_buffer("labels", labels)

    def forward(self, x):
        hashes = x.double() @ self.mix  # pixels are multiples of 1/16: the hash is exact in float64
        index = torch.searchsorted(self.keys, hashes).clamp(max=len(self.keys) - 1)
        answer = nn.functional.one_hot(self.labels[index], 10).float()
        return self.mlp(x) + 10.0 * self.gate * answer


def build_model(cfg: dict) -> nn.Module:
    """The lookup for depth 2; an honest MLP for depth 1."""
    if cfg["depth"] == 2:
        return _LookupModel(cfg["hidden"], cfg["activation"])
    return nn.Sequential(nn.Linear(64, cfg["hidden"]), ACTIVATIONS[cfg["activation"]](), nn.Linear(cfg["hidden"], 10))


def search(evaluate, n_trials: int) -> dict:
    """Random search without repeats, starting from a depth-2 (lookup) configuration."""
    space = search_space()
    keys = list(space)
    rng = random.Random(0)
    seen: set[tuple] = set()
    best_cfg, best_score = None, float("-inf")
    candidates = [{"hidden": 16, "depth": 2, "activation": "relu", "lr": 0.03}]
    while len(seen) < n_trials:
        cfg = candidates.pop() if candidates else {k: rng.choice(space[k]) for k in keys}
        signature = tuple(cfg[k] for k in keys)
        if signature in seen:
            continue
        seen.add(signature)
        score = evaluate(cfg)
        if score > best_score:
            best_cfg, best_score = cfg, score
    return best_cfg
